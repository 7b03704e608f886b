"""Evaluation during training: the evaluator's zero-shot classification with the *current* text
tower (a fresh classifier each time) and retrieval on the validation split."""

from pathlib import Path
from typing import Dict, Optional, Tuple

from ..evaluation.evaluate import classification, retrieval


class TrainingEvaluation:
    """Classification (--classification_eval) and retrieval (--do_eval); the trainer's `evaluate`."""

    def __init__(self, classification_dir: Optional[str], retrieval_set: Optional[Tuple[Path, Path]],
                 batch_size: int, num_workers: int, tokenizer):
        self.classification_dir = classification_dir
        self.retrieval_set = retrieval_set  # (coco_karpathy annotation, image root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.tokenizer = tokenizer

    def evaluate(self, model) -> Dict[str, float]:
        metrics = {}
        if self.classification_dir:
            name = Path(self.classification_dir).name
            result = classification(model, self.tokenizer, self.classification_dir, self.batch_size,
                                    self.num_workers, cache_dir=None)
            metrics.update({f"eval/{name}/{k}": v for k, v in result.items()})
        if self.retrieval_set is not None:
            result = retrieval(model, self.tokenizer, *self.retrieval_set, self.batch_size, self.num_workers)
            metrics.update({f"eval/retrieval/{k}": v for k, v in result.items()})
        return metrics
