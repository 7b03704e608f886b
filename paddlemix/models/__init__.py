"""Model families, their shared layers, configs, registry and losses."""

from .clip import CLIP
from .configuration import CLIPConfig, TextConfig, VisionConfig
from .loss import ClipLoss
from .modeling_utils import parameter_count
from .registry import UnknownModelError, list_models

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ClipLoss",
    "TextConfig",
    "UnknownModelError",
    "VisionConfig",
    "list_models",
    "parameter_count",
]
