"""Text and image preprocessing shared by the CLIP-family models."""

from .constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from .image_transforms import image_transform
from .tokenizer import SimpleTokenizer, decode, tokenize
from .processor import CLIPProcessor

__all__ = [
    "CLIPProcessor",
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "SimpleTokenizer",
    "decode",
    "image_transform",
    "tokenize",
]
