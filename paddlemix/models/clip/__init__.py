"""The CLIP family."""

from .modeling import CLIP

__all__ = ["CLIP"]
