"""Model families, their shared layers, configs, registry and losses."""

from .clip import CLIP
from .clip.dual_encoder import DualEncoder
from .coca import CoCa, CoCaLoss
from .configuration import CLIPConfig, CoCaConfig, MultimodalConfig, TextConfig, VisionConfig
from .loss import ClipLoss
from .modeling_utils import parameter_count
from .registry import UnknownModelError, list_models

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ClipLoss",
    "CoCa",
    "CoCaConfig",
    "CoCaLoss",
    "DualEncoder",
    "MultimodalConfig",
    "TextConfig",
    "UnknownModelError",
    "VisionConfig",
    "list_models",
    "parameter_count",
]
