"""One rank of the ClipLoss gradient-equivalence check; also the shared toy model and batch.

Launched as `python -m paddle.distributed.launch --nproc_per_node W clip_loss_worker.py OUT`.
For each case (the valid (local_loss, gather_with_grad) combinations in VALID_CASES, plus
open_clip's gather without grad as NAIVE_CASE), every rank runs its slice of the same
global batch through paddle.DataParallel and writes OUT/<case>.rank<r>.npz holding its
loss and every parameter gradient after DataParallel's averaging.
tests/test_clip_loss_distributed.py compares them with one process on the whole batch.
The model is a tiny real CLIP (float64), built by build_model in every process alike.
"""

import logging
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn
import paddle.nn.functional as F

from paddlemix.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from paddlemix.models.loss import ClipLoss
from paddlemix.utils.distributed import run_script

logger = logging.getLogger("paddlemix.tests.clip_loss_worker")

GLOBAL_BATCH = 8
SEED = 1234
# Float64 so that the single- and multi-process gradients can be compared tightly.
DTYPE = "float64"
# A tiny real CLIP: both towers, the causal mask, argmax pooling and logit_scale all take part.
TINY_CLIP = CLIPConfig(
    embed_dim=8,
    vision_cfg=VisionConfig(image_size=16, patch_size=8, width=16, head_width=8, layers=2),
    text_cfg=TextConfig(context_length=6, vocab_size=20, width=16, heads=2, layers=2),
)

# name -> (local_loss, gather_with_grad)
VALID_CASES = {
    "global_gather_with_grad": (False, True),
    "global_local_grad": (False, False),
    "local_gather_with_grad": (True, True),
}
NAIVE_CASE = "open_clip_gather_without_grad"
# rows of the global batch each rank takes: equal, and unequal as when a rank's batch lost bad samples
SPLITS = {"even": (4, 4), "uneven": (5, 3)}


def build_model() -> CLIP:
    """The same initial weights in every process."""
    paddle.seed(SEED)
    return CLIP(TINY_CLIP).to(dtype=DTYPE)


def encode(model: nn.Layer, images, texts):
    """(image_features [N, D], text_features [N, D], scale []) -- normalised, as the loss takes them."""
    out = model(image=images, input_ids=texts)
    return out["image_features"], out["text_features"], out["logit_scale"]


def global_batch():
    """(images [GLOBAL_BATCH, 3, 16, 16], texts int64 [GLOBAL_BATCH, 6]), fixed."""
    rng = np.random.default_rng(SEED)
    size = TINY_CLIP.vision_cfg.image_size
    images = rng.standard_normal((GLOBAL_BATCH, 3, size, size)).astype(DTYPE)
    texts = rng.integers(1, TINY_CLIP.text_cfg.vocab_size, (GLOBAL_BATCH, TINY_CLIP.text_cfg.context_length))
    return paddle.to_tensor(images), paddle.to_tensor(texts, dtype="int64")


def gradients(model: nn.Layer) -> dict:
    """Parameter name -> gradient as a numpy array."""
    return {name: param.grad.numpy() for name, param in model.named_parameters()}


def naive_open_clip_loss(image_features, text_features, scale):
    """open_clip's local_loss=False, gather_with_grad=False path: a plain all_gather with this
    rank's rows put back so they carry gradient, and no world_size factor."""
    rank = dist.get_rank()

    def gather(x):
        parts = []
        dist.all_gather(parts, x)
        parts[rank] = x
        return paddle.concat(parts, axis=0)

    all_image, all_text = gather(image_features), gather(text_features)
    logits = scale * all_image @ all_text.T
    labels = paddle.arange(logits.shape[0], dtype="int64")
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def run_case(name: str, split: str, out_dir: str) -> None:
    rank = dist.get_rank()
    model = build_model()
    parallel_model = paddle.DataParallel(model)
    images, texts = global_batch()
    rows = SPLITS[split]
    own = slice(sum(rows[:rank]), sum(rows[: rank + 1]))

    image_features, text_features, scale = encode(parallel_model, images[own], texts[own])
    if name == NAIVE_CASE:
        loss = naive_open_clip_loss(image_features, text_features, scale)
    else:
        local_loss, gather_with_grad = VALID_CASES[name]
        loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)(
            image_features, text_features, scale
        )
    loss.backward()
    np.savez(
        os.path.join(out_dir, f"{name}.{split}.rank{rank}.npz"),
        loss=loss.numpy(),
        **gradients(model),
    )


def main(out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO)
    dist.init_parallel_env()
    for name, split in [*((n, s) for n in VALID_CASES for s in SPLITS), (NAIVE_CASE, "even")]:
        run_case(name, split, out_dir)
        logger.info("rank %d wrote %s (%s)", dist.get_rank(), name, split)


if __name__ == "__main__":
    run_script(main, sys.argv[1])
