"""Evaluation during training: the evaluator's zero-shot classification with the *current* text
tower (a fresh classifier each time), and on the validation split retrieval and the training loss
(`eval_loss`, as HF's run_clip.py reports it)."""

from pathlib import Path
from typing import Dict, Optional, Tuple

import paddle

from ..data.loader import ImageTextLoader
from ..data.pair_keys import pair_keys_of
from ..evaluation.evaluate import classification, retrieval
from ..evaluation.zero_shot import evaluation_mode
from ..models.loss_registry import training_loss
from ..utils.distributed import gather_row_counts


class TrainingEvaluation:
    """Classification (--classification_eval) and retrieval (--do_eval); the trainer's `evaluate`."""

    def __init__(self, classification_dir: Optional[str], retrieval_set: Optional[Tuple[Path, Path]],
                 batch_size: int, num_workers: int, tokenizer, loss_set=None, loss_fn=None):
        """loss_set: the val split as training pairs (one row per caption), whose mean loss under
        `loss_fn` (the trainer's) is reported as eval_loss."""
        self.classification_dir = classification_dir
        self.retrieval_set = retrieval_set  # (coco_karpathy annotation, image root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.tokenizer = tokenizer
        self.loss_set = loss_set
        self.loss_fn = loss_fn

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
        if self.loss_set is not None:
            metrics["eval_loss"] = self.eval_loss(model)
        return metrics

    @paddle.no_grad()
    def eval_loss(self, model) -> float:
        """The loss over the val pairs in batches of `batch_size` per process (the whole global batch
        in each loss, as in training), each batch weighted by its number of pairs."""
        loader = ImageTextLoader(self.loss_set, self.batch_size, self.tokenizer, num_workers=self.num_workers,
                                 shuffle=False, name="eval")
        total, pairs = 0.0, 0
        with evaluation_mode(model):
            for batch in loader:
                rows = sum(gather_row_counts(int(batch["image"].shape[0])))
                if not rows:
                    continue
                outputs = model(image=batch["image"], input_ids=batch["input_ids"])
                total += float(training_loss(self.loss_fn, outputs, **pair_keys_of(batch))) * rows
                pairs += rows
        return total / max(pairs, 1)
