"""`run_zero_shot_eval.py` of every family: ImageNet-style zero-shot classification and COCO retrieval.

    python paddlemix/examples/evaclip/run_zero_shot_eval.py --model paddlemix/EVA/EVA02-CLIP-B-16 \\
        --classification_eval IN_1K_DIR --retrieval_eval coco --per_device_eval_batch_size 64 --output_dir OUT

Prints `zero-shot classification task: <name>: top1: X, top5: Y` and retrieval recalls in percent,
and writes OUT/results.json (recalls as fractions). Under `paddle.distributed.launch` the images
and captions are split over the processes; the metrics equal one process's.
"""

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import paddle

from .. import AutoModel
from ..data.coco import annotation_file, coco_root
from ..models.state_dict import load_state_dict_strict
from ..processors import get_tokenizer
from ..processors.image_transforms import image_transform_for
from ..trainer.arguments import CLIPTrainingArguments, DataArguments, ModelArguments, parse_arguments
from ..inference import load_model
from ..models.registry import resolve_model_name
from ..trainer.platform import check_platform
from ..utils.distributed import get_rank
from ..utils.log import logger
from .datasets import ClassificationSet, caption_set
from .features import image_features, text_features
from .retrieval import retrieval_metrics
from .zero_shot import build_zero_shot_classifier, topk_accuracy


@dataclass
class EvalArguments:
    retrieval_eval: Optional[str] = field(
        default=None, metadata={"help": "coco (Karpathy test split) or a coco_karpathy-format JSON to retrieve on"}
    )
    classifier_cache: Optional[str] = field(
        default=None, metadata={"help": "directory of cached zero-shot classifiers (keyed by the weights' hash)"}
    )
    backend: str = field(
        default="eager", metadata={"help": "eager, or inference: --model is a `paddlemix.tools.export` directory"}
    )
    precision: str = field(default="fp32", metadata={"help": "inference backend: fp32 or bf16 (oneDNN on CPU)"})


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


def retrieval_set(spec: str, data_dir: Optional[str]):
    """(annotation file, image root) for `--retrieval_eval coco` or a coco_karpathy JSON."""
    if spec == "coco":
        root = coco_root(data_dir)
        return annotation_file(root, "test"), root / "images"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--retrieval_eval {spec}: neither 'coco' nor an existing coco_karpathy JSON")
    image_root = Path(data_dir) if data_dir else path.parent.parent / "images"
    return path, image_root if image_root.is_dir() else path.parent


def run_zero_shot_eval(argv: Optional[Sequence[str]] = None, default_model: Optional[str] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if default_model and not any(a == "--model" or a.startswith("--model=") for a in argv):
        argv = ["--model", default_model, *argv]
    model_args, data_args, args, eval_args = parse_arguments(
        argv, (ModelArguments, DataArguments, CLIPTrainingArguments, EvalArguments))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_platform(args)
    model = load_model(model_args.model, eval_args.backend, eval_args.precision)
    if model_args.pretrained_text_model:
        if eval_args.backend != "eager":
            raise ValueError("--pretrained_text_model needs --backend eager (an export holds its own text encoder)")
        donor = AutoModel.from_pretrained(resolve_model_name(model_args.pretrained_text_model)).text
        load_state_dict_strict(model.text, donor.state_dict(), source="--pretrained_text_model (text tower)")
    tokenizer = get_tokenizer(model, model_args.context_length)
    batch, workers = args.per_device_eval_batch_size, args.dataloader_num_workers
    results: Dict = {}
    if data_args.classification_eval:
        name = Path(data_args.classification_eval).name
        results[name] = classification(model, tokenizer, data_args.classification_eval, batch, workers,
                                       eval_args.classifier_cache)
    if eval_args.retrieval_eval:
        annotation, image_root = retrieval_set(eval_args.retrieval_eval, data_args.data_dir)
        results["retrieval"] = retrieval(model, tokenizer, annotation, image_root, batch, workers)
    if not results:
        raise ValueError("nothing to evaluate: give --classification_eval DIR and/or --retrieval_eval coco|FILE.json")
    if get_rank() == 0:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
