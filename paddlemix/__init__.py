"""paddlemix: the CLIP family (CLIP, EVA-CLIP, CoCa) for PaddlePaddle."""

from .utils.cpu_memory import keep_freed_cpu_memory

keep_freed_cpu_memory()  # before any tensor is made: see utils.cpu_memory

from .auto import AutoConfig, AutoModel, AutoProcessor
from .models import list_models

__version__ = "0.1.0"

__all__ = ["AutoConfig", "AutoModel", "AutoProcessor", "list_models", "__version__"]
