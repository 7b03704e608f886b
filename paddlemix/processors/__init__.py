"""Text and image preprocessing shared by the CLIP-family models."""

from ..models.configuration import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from .factory import get_tokenizer
from .image_transforms import image_transform
from .tokenizer import SimpleTokenizer
from .processor import CLIPProcessor

__all__ = [
    "CLIPProcessor",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "SimpleTokenizer",
    "get_tokenizer",
    "image_transform",
]
