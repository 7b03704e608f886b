"""Evaluation during training: zero-shot classification with the *current* text tower (a fresh
classifier each time) and image-text retrieval on the validation split."""

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from PIL import Image

from ..evaluation import build_zero_shot_classifier, evaluation_mode, retrieval_metrics, zero_shot_classification
from ..evaluation.datasets import ClassificationSet
from ..processors import image_transform, tokenize
from ..utils.log import logger


def _image_batches(paths: Sequence[str], transform, batch_size: int) -> Iterator[paddle.Tensor]:
    for start in range(0, len(paths), batch_size):
        chunk = [transform(Image.open(path)) for path in paths[start:start + batch_size]]
        yield paddle.to_tensor(np.stack(chunk))


def classification_metrics(model, dataset: ClassificationSet, batch_size: int, context_length: int) -> Dict[str, float]:
    transform = image_transform(model.visual.image_size, is_train=False)
    classifier = build_zero_shot_classifier(model, dataset.classnames, dataset.templates, context_length=context_length)
    paths = [path for path, _ in dataset.samples]
    targets = [target for _, target in dataset.samples]
    batches = ((images, paddle.to_tensor(targets[i * batch_size:(i + 1) * batch_size]))
               for i, images in enumerate(_image_batches(paths, transform, batch_size)))
    return zero_shot_classification(model, batches, classifier)


def caption_retrieval_metrics(model, images: List[str], captions: List[str], owner: List[int], batch_size: int,
                              context_length: int) -> Dict[str, float]:
    transform = image_transform(model.visual.image_size, is_train=False)
    with evaluation_mode(model):
        image_features = paddle.concat([model.encode_image(b, normalize=True)
                                        for b in _image_batches(images, transform, batch_size)])
        text_features = paddle.concat([
            model.encode_text(paddle.to_tensor(tokenize(captions[s:s + batch_size], context_length)), normalize=True)
            for s in range(0, len(captions), batch_size)
        ])
    return retrieval_metrics(image_features, text_features, np.asarray(owner))


class TrainingEvaluation:
    """Classification (--classification_eval) and retrieval (--do_eval); the trainer's `evaluate`."""

    def __init__(self, classification_dir: Optional[str], retrieval_set: Optional[Tuple[list, list, list]],
                 batch_size: int, context_length: int):
        self.classification = ClassificationSet(classification_dir) if classification_dir else None
        self.retrieval_set = retrieval_set
        self.batch_size = batch_size
        self.context_length = context_length

    def evaluate(self, model) -> Dict[str, float]:
        metrics = {}
        if self.classification is not None:
            result = classification_metrics(model, self.classification, self.batch_size, self.context_length)
            top5 = next(k for k in result if k.startswith("top") and k != "top1")
            logger.info("zero-shot classification task: %s: top1: %.2f, %s: %.2f", self.classification.name,
                        result["top1"], top5, result[top5])
            metrics.update({f"eval/{self.classification.name}/{k}": v for k, v in result.items()})
        if self.retrieval_set is not None:
            result = caption_retrieval_metrics(model, *self.retrieval_set, self.batch_size, self.context_length)
            logger.info("retrieval: %s", ", ".join(f"{k}: {v:.4f}" for k, v in result.items()))
            metrics.update({f"eval/retrieval/{k}": v for k, v in result.items()})
        return metrics
