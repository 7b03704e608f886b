"""One rank of the masked ClipLoss check: pairs sharing an image or a caption, split over ranks.

Launched as `python -m paddle.distributed.launch --nproc_per_node 2 duplicate_pairs_worker.py OUT`.
For each valid (local_loss, gather_with_grad) mode and each split of the global batch (equal and
unequal row counts), every rank runs its rows through paddle.DataParallel with the batch's pair keys
and writes OUT/<case>.<split>.rank<r>.npz: its loss and every parameter gradient after
DataParallel's averaging. tests/test_duplicate_pairs_distributed.py compares them with one process
on the whole batch. The model and batch are built alike in every process.
"""

import logging
import os
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared reference batch

from clip_loss_worker import TINY_CLIP, VALID_CASES, build_model, encode, gradients  # noqa: E402
from duplicate_pairs_reference import CAPTION_OF_ROW, IMAGE_OF_ROW  # noqa: E402
from paddlemix.models.loss import ClipLoss  # noqa: E402
from paddlemix.utils.distributed import run_script  # noqa: E402

logger = logging.getLogger("paddlemix.tests.duplicate_pairs_worker")

SEED = 99
# rows of the global batch (20) each rank takes; both splits put copies of every image on both ranks
SPLITS = {"even": (10, 10), "uneven": (13, 7)}


def global_batch():
    """{"image" [20, 3, 16, 16] float64, "input_ids" int64 [20, 6], "image_keys", "caption_keys" int64 [20]}:
    a repeated image has the same pixels, a shared caption the same tokens."""
    rng = np.random.default_rng(SEED)
    size, text = TINY_CLIP.vision_cfg.image_size, TINY_CLIP.text_cfg
    images = rng.standard_normal((IMAGE_OF_ROW.max() + 1, 3, size, size))[IMAGE_OF_ROW]
    captions = rng.integers(1, text.vocab_size, (CAPTION_OF_ROW.max() + 1, text.context_length))[CAPTION_OF_ROW]
    return {"image": paddle.to_tensor(images), "input_ids": paddle.to_tensor(captions, dtype="int64"),
            "image_keys": paddle.to_tensor(IMAGE_OF_ROW * 1000003, dtype="int64"),
            "caption_keys": paddle.to_tensor(CAPTION_OF_ROW - 7, dtype="int64")}


def run_case(name: str, split: str, out_dir: str) -> None:
    rank = dist.get_rank()
    model = build_model()
    parallel_model = paddle.DataParallel(model)
    batch = global_batch()
    rows = SPLITS[split]
    own = {key: value[sum(rows[:rank]):sum(rows[: rank + 1])] for key, value in batch.items()}

    image_features, text_features, scale = encode(parallel_model, own["image"], own["input_ids"])
    local_loss, gather_with_grad = VALID_CASES[name]
    loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)(
        image_features, text_features, scale, image_keys=own["image_keys"], caption_keys=own["caption_keys"]
    )
    loss.backward()
    np.savez(os.path.join(out_dir, f"{name}.{split}.rank{rank}.npz"), loss=loss.numpy(), **gradients(model))


def main(out_dir: str) -> None:
    logging.basicConfig(level=logging.INFO)
    dist.init_parallel_env()
    for name in VALID_CASES:
        for split in SPLITS:
            run_case(name, split, out_dir)
            logger.info("rank %d wrote %s (%s)", dist.get_rank(), name, split)


if __name__ == "__main__":
    run_script(main, sys.argv[1])
