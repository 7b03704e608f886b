"""paddlemix: the CLIP family (CLIP, EVA-CLIP, CoCa) for PaddlePaddle."""

from .auto import AutoConfig, AutoModel, AutoProcessor
from .models import list_models

__version__ = "0.1.0"

__all__ = ["AutoConfig", "AutoModel", "AutoProcessor", "list_models", "__version__"]
