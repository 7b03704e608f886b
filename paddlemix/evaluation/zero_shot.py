"""Zero-shot classification: a text classifier from class names x prompt templates, and top-k accuracy.

Follows open_clip's `build_zero_shot_classifier` and `open_clip_train/zero_shot.py`. Accuracy ties are
broken by class index (see `ranking`), the way `argmax` breaks them.
"""

import contextlib
import string
from typing import Dict, Iterable, Iterator, Sequence, Tuple

import paddle
import paddle.nn.functional as F

from ..utils.log import logger
from .ranking import as_float_array, as_index_array, rank_of


@contextlib.contextmanager
def evaluation_mode(model: paddle.nn.Layer) -> Iterator[None]:
    """Eval mode and no gradients inside; afterwards every sublayer's train/eval flag is as it was."""
    flags = [(layer, layer.training) for layer in model.sublayers(include_self=True)]
    model.eval()
    try:
        with paddle.no_grad():
            yield
    finally:
        for layer, training in flags:
            layer.training = training


def check_template(template: str, where: str = "") -> str:
    """`template` if it holds exactly one `{}` (the class name) and no other replacement field; else a
    ValueError naming it and `where` (a flag, or file:line)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:  # an unmatched { or }
        problem = str(error)
    else:
        if fields == [""]:
            return template
        problem = f"it has {len(fields)}: " + ", ".join("{" + field + "}" for field in fields) if fields else "it has none"
    raise ValueError(f"{where + ': ' if where else ''}template {template!r} must hold exactly one {{}} for the class "
                     f"name ({problem}); write a literal brace as {{{{ or }}}}")


# Texts per forward pass of the text tower while building a classifier: CLIP ViT-B-32 here encodes
# 28 texts/s in batches of 80 and 17 in batches of 800 (the attention scores outgrow the caches).
TEXT_CHUNK_ROWS = 128


def build_zero_shot_classifier(
    model: paddle.nn.Layer,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_classes: int = 64,
) -> paddle.Tensor:
    """Class embeddings as a linear classifier: [embed_dim, num_classes], each column of unit length.

    Column c is the mean over templates of the L2-normalised text embeddings of
    `template.format(classnames[c])`, renormalised. `batch_classes` classes (x all templates) go
    through the text tower at once; the result does not depend on it. `tokenizer`: the model's
    (`processors.get_tokenizer(model)`), whose rows are as long as its `context_length`.
    """
    if not classnames or not templates:
        raise ValueError(f"need at least one class name and one template, got {len(classnames)} and {len(templates)}")
    for template in templates:
        check_template(template)
    if batch_classes < 1:
        raise ValueError(f"batch_classes must be >= 1, got {batch_classes}")
    logger.info("building zero-shot classifier: %d classes x %d templates", len(classnames), len(templates))
    columns = []
    with evaluation_mode(model):
        for start in range(0, len(classnames), batch_classes):
            batch = classnames[start:start + batch_classes]
            texts = [template.format(name) for name in batch for template in templates]
            input_ids = paddle.to_tensor(tokenizer(texts))
            embeddings = paddle.concat([  # in chunks: thousands of rows at once run slower per text
                model.encode_text(input_ids[row:row + TEXT_CHUNK_ROWS], normalize=True)
                for row in range(0, len(texts), TEXT_CHUNK_ROWS)
            ])
            embeddings = embeddings.reshape([len(batch), len(templates), -1]).mean(axis=1)
            columns.append(F.normalize(embeddings, axis=-1))
    return paddle.concat(columns, axis=0).T


def _topk_names(ks: Sequence[int], num_classes: int) -> Tuple[Tuple[str, int], ...]:
    """(key, k) per requested k; k is capped at the number of classes, and the key names the cap."""
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k needs k >= 1, got ks={tuple(ks)}")
    return tuple((f"top{min(k, num_classes)}", min(k, num_classes)) for k in ks)


def _count_topk_correct(logits, targets, ks: Sequence[int]) -> Tuple[Dict[str, int], int]:
    """logits [N, C], targets [N] -> (samples whose target ranks within k, per key of `_topk_names`; N)."""
    logits = as_float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [num_samples, num_classes], got shape {logits.shape}")
    targets = as_index_array(targets, "targets", size=logits.shape[1])
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {targets.shape[0]} targets")
    ranks = rank_of(logits, targets)
    return {key: int((ranks <= k).sum()) for key, k in _topk_names(ks, logits.shape[1])}, len(ranks)


def topk_accuracy(logits, targets, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy in percent: logits [N, C] (paddle or numpy), targets [N] int class indices.

    Keys are `top{k}`; with fewer classes than k, k is C and the key says so (`top3` for 3 classes),
    which is then 100.0. Ties: an equal logit at a lower class index ranks first.
    """
    counts, num_samples = _count_topk_correct(logits, targets, ks)
    if num_samples == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    return {key: 100.0 * count / num_samples for key, count in counts.items()}


def zero_shot_classification(
    model: paddle.nn.Layer,
    image_batches: Iterable[Tuple[paddle.Tensor, paddle.Tensor]],
    classifier: paddle.Tensor,
    ks: Sequence[int] = (1, 5),
) -> Dict[str, float]:
    """Top-k accuracy (percent, keys as `topk_accuracy`) of `classifier` [embed_dim, C] over all batches.

    `image_batches` yields (images [B, 3, H, W] float32, targets [B] int64). Logits are the normalised
    image embeddings times `classifier`; the model's logit scale would not change any rank. The result
    also holds `num_samples`.
    """
    totals: Dict[str, int] = {}
    num_samples = 0
    with evaluation_mode(model):
        for images, targets in image_batches:
            logits = paddle.matmul(model.encode_image(images, normalize=True), classifier)
            counts, batch_size = _count_topk_correct(logits, targets, ks)
            for key, count in counts.items():
                totals[key] = totals.get(key, 0) + count
            num_samples += batch_size
    if num_samples == 0:
        raise ValueError("image_batches yielded no images")
    results = {key: 100.0 * count / num_samples for key, count in totals.items()}
    results["num_samples"] = num_samples
    logger.info("zero-shot classification on %d images: %s", num_samples, results)
    return results
