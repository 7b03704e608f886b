"""`AutoConfig`, `AutoModel`, `AutoProcessor`: build or load any family by registry name or directory
(the models' loaders live in models.auto, the processor's beside it in processors)."""

from .models.auto import MODEL_TYPES, AutoConfig, AutoModel
from .processors.processor import AutoProcessor

__all__ = ["MODEL_TYPES", "AutoConfig", "AutoModel", "AutoProcessor"]
