"""One rank of the SigLipLoss gradient-equality check; also the shared toy model and batch.

Launched as `python -m paddle.distributed.launch --nproc_per_node W siglip_loss_worker.py OUT`.
For each case of CASES and each split of SPLITS[W], every rank runs its rows of the same global batch
through paddle.DataParallel and writes OUT/<case>.<split>.rank<r>.npz: its loss and every parameter
gradient after DataParallel's averaging. The `accumulated` cases split each rank's rows into two
micro-batches and go through the trainer's gradient accumulation (CLIPTrainer._accumulated_backward).
tests/test_siglip_loss_distributed.py compares them with one process on the whole batch.
"""

import contextlib
import logging
import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

from paddlemix.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from paddlemix.models.siglip_loss import SigLipLoss
from paddlemix.models.loss_registry import training_loss
from paddlemix.trainer.trainer import CLIPTrainer
from paddlemix.utils.distributed import run_script

logger = logging.getLogger("paddlemix.tests.siglip_loss_worker")

SEED = 4321
DTYPE = "float64"  # so that one- and multi-process gradients compare tightly
# A tiny SigLIP-style CLIP: both towers, logit_scale (ln 10) and logit_bias (-10) take part.
TINY_SIGLIP = CLIPConfig(
    embed_dim=8,
    vision_cfg=VisionConfig(image_size=16, patch_size=8, width=16, head_width=8, layers=1),
    text_cfg=TextConfig(context_length=6, vocab_size=20, width=16, heads=2, layers=1),
    init_logit_scale=float(np.log(10.0)),
    init_logit_bias=-10.0,
    loss="siglip",
)
# case -> (exchange, micro-batches per rank, with pair keys)
CASES = {
    "bidir": ("bidir", 1, False),
    "shift": ("shift", 1, False),
    "gather": ("gather", 1, False),
    "bidir_accumulated": ("bidir", 2, False),
    "gather_accumulated": ("gather", 2, False),
    "bidir_pair_keys": ("bidir", 1, True),
}
# rows of the global batch each rank takes, per world size: equal, and unequal as when a rank's batch
# lost bad samples
SPLITS = {2: {"even": (4, 4), "uneven": (5, 3)}, 3: {"even": (3, 3, 3), "uneven": (4, 3, 2)}}
CHUNK = 2  # texts per logits chunk: several chunks per block


def build_model() -> CLIP:
    """The same initial weights in every process."""
    paddle.seed(SEED)
    return CLIP(TINY_SIGLIP).to(dtype=DTYPE)


def global_batch(rows: int):
    """(images [rows, 3, 16, 16], texts int64 [rows, 6], caption keys int64 [rows]), fixed; the keys
    repeat across the batch, so pairs on different ranks share captions."""
    rng = np.random.default_rng(SEED)
    size = TINY_SIGLIP.vision_cfg.image_size
    images = rng.standard_normal((rows, 3, size, size)).astype(DTYPE)
    texts = rng.integers(1, TINY_SIGLIP.text_cfg.vocab_size, (rows, TINY_SIGLIP.text_cfg.context_length))
    caption_keys = np.arange(rows) % 3
    return paddle.to_tensor(images), paddle.to_tensor(texts, dtype="int64"), paddle.to_tensor(caption_keys)


def gradients(model) -> dict:
    return {name: param.grad.numpy() for name, param in model.named_parameters()}


class AccumulatingTrainer:
    """What CLIPTrainer._accumulated_backward reads of the trainer: its loss and backward, no AMP,
    no non-finite checks."""

    _accumulated_backward = CLIPTrainer._accumulated_backward
    _joined = staticmethod(CLIPTrainer._joined)

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    @staticmethod
    def autocast_smart_context_manager():
        return contextlib.nullcontext()

    @staticmethod
    def _skip_nonfinite(what, values) -> bool:
        return False

    @staticmethod
    def _backward(loss) -> None:
        loss.backward()


def run_case(name: str, split: str, out_dir: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    exchange, micro_batches, with_keys = CASES[name]
    model = build_model()
    parallel_model = paddle.DataParallel(model)
    rows = SPLITS[world][split]
    images, texts, caption_keys = global_batch(sum(rows))
    own = slice(sum(rows[:rank]), sum(rows[: rank + 1]))
    loss_fn = SigLipLoss(exchange=exchange, chunk=CHUNK)
    keys = {"caption_keys": caption_keys[own]} if with_keys else {}
    if micro_batches == 1:
        loss = training_loss(loss_fn, parallel_model(image=images[own], input_ids=texts[own]), **keys)
        loss.backward()
    else:
        half = (rows[rank] + 1) // 2
        batches = [{"image": images[own][part], "input_ids": texts[own][part]}
                   for part in (slice(0, half), slice(half, None))]
        loss = AccumulatingTrainer(loss_fn)._accumulated_backward(parallel_model, batches)
    np.savez(os.path.join(out_dir, f"{name}.{split}.rank{rank}.npz"), loss=loss.numpy(), **gradients(model))


def main(out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO)
    dist.init_parallel_env()
    for name in CASES:
        for split in SPLITS[dist.get_world_size()]:
            run_case(name, split, out_dir)
            logger.info("rank %d: %s/%s done", dist.get_rank(), name, split)


if __name__ == "__main__":
    run_script(main, sys.argv[1])
