"""Evaluation shared by every family: zero-shot classification and image-text retrieval."""

from .retrieval import retrieval_metrics
from .zero_shot import build_zero_shot_classifier, evaluation_mode, topk_accuracy, zero_shot_classification
from .zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, load_metadata_file

__all__ = [
    "IMAGENET_CLASSNAMES",
    "OPENAI_IMAGENET_TEMPLATES",
    "build_zero_shot_classifier",
    "evaluation_mode",
    "load_metadata_file",
    "retrieval_metrics",
    "topk_accuracy",
    "zero_shot_classification",
]
