"""Zero-shot classification and retrieval of a model on files: the library under the evaluation CLI
(`paddlemix.tools.zero_shot_eval`, the families' run_zero_shot_eval.py) and the trainer's --do_eval."""

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import paddle

from ..processors.image_transforms import image_transform_for
from ..utils.distributed import get_rank
from ..utils.log import logger
from .datasets import ClassificationSet, caption_set
from .features import image_features, text_features
from .retrieval import retrieval_metrics
from .zero_shot import build_zero_shot_classifier, topk_accuracy


def text_tower_fingerprint(model) -> str:
    """sha256 of the text tower's weights: what a zero-shot classifier depends on."""
    if hasattr(model, "text_fingerprint"):  # an exported model: its text encoder file
        return model.text_fingerprint()
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name.startswith("text."):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value.numpy()).tobytes())
    return digest.hexdigest()


def cached_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                      cache_dir: Optional[str]) -> paddle.Tensor:
    """The zero-shot classifier, from `cache_dir` when one was built for these very weights, names and
    templates (the key hashes all of them; a name alone could match another model's stale cache)."""
    if not cache_dir:
        return build_zero_shot_classifier(model, tokenizer, classnames, templates)
    key = hashlib.sha256(json.dumps([text_tower_fingerprint(model), list(classnames), list(templates),
                                     type(tokenizer).__name__, tokenizer.context_length]).encode()).hexdigest()
    path = Path(cache_dir) / f"zero_shot_classifier-{key[:32]}.npy"
    if path.is_file():
        logger.info("zero-shot classifier from the cache: %s", path)
        return paddle.to_tensor(np.load(path))
    classifier = build_zero_shot_classifier(model, tokenizer, classnames, templates)
    if get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, classifier.numpy())
        partial.replace(path)
    return classifier


def classification(model, tokenizer, directory: str, batch_size: int, num_workers: int,
                   cache_dir: Optional[str]) -> Dict[str, float]:
    dataset = ClassificationSet(directory)
    paths = [path for path, _ in dataset.samples]
    targets = np.array([target for _, target in dataset.samples])
    transform = image_transform_for(model.config, is_train=False)
    images = image_features(model, paths, transform, batch_size, num_workers)
    classifier = cached_classifier(model, tokenizer, dataset.classnames, dataset.templates, cache_dir)
    logits = images.features @ classifier.numpy()
    metrics = topk_accuracy(logits, targets[images.kept])
    metrics["num_samples"] = int(len(images.kept))
    metrics["skipped"] = int(sum(images.skipped.values()))
    top5 = next(k for k in metrics if k.startswith("top") and k != "top1")
    logger.info("zero-shot classification task: %s: top1: %.2f, %s: %.2f", dataset.name, metrics["top1"], top5,
                metrics[top5])
    return metrics


def retrieval(model, tokenizer, annotation: Path, image_root: Path, batch_size: int,
              num_workers: int) -> Dict[str, float]:
    paths, captions, owner = caption_set(annotation, image_root)
    transform = image_transform_for(model.config, is_train=False)
    images = image_features(model, paths, transform, batch_size, num_workers)
    texts = text_features(model, tokenizer, captions, batch_size)
    # Captions of unreadable images have nothing to retrieve: they leave with their image.
    position = np.full(len(paths), -1)
    position[images.kept] = np.arange(len(images.kept))
    owner = position[np.asarray(owner)]
    keep = owner >= 0
    metrics = retrieval_metrics(images.features, texts[keep], owner[keep])
    shown = ", ".join(f"{k}: {v * 100:.2f}" if "@" in k else f"{k}: {v:.2f}" for k, v in metrics.items())
    logger.info("retrieval (%s, %d images, %d captions): %s", annotation.name, len(images.kept), int(keep.sum()), shown)
    return dict(metrics, num_images=int(len(images.kept)), num_captions=int(keep.sum()))
