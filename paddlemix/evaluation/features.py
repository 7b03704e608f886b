"""Features of many images and captions, computed once each, optionally split over processes.

With `paddle.distributed.launch` every rank encodes every world-th item; the features are then
gathered and put back in item order, so every rank holds the same tensors as one process would.
Unreadable images are skipped and counted (they have no feature: `kept` lists the ones that do).
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List, Sequence

import numpy as np
import paddle
import paddle.distributed as dist

from ..data.loader import main_thread_batches
from ..data.samples import BadSample, load_image_file, log_skipped, transformed
from ..utils.distributed import data_worker_init, gather_row_counts, get_rank, get_world_size
from ..utils.log import logger
from .zero_shot import evaluation_mode


@dataclass
class ImageFeatures:
    features: np.ndarray  # [kept, D] float32, in item order
    kept: np.ndarray  # [kept] int64 indices of the items that were readable
    skipped: Counter = field(default_factory=Counter)  # bad-sample reason -> count


class _ImageFiles(paddle.io.Dataset):
    def __init__(self, paths: Sequence[str], indices: Sequence[int], transform: Callable):
        self.paths, self.indices, self.transform = paths, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        image = load_image_file(self.paths[index])
        if not isinstance(image, BadSample):
            image = transformed(image, self.transform, self.paths[index])
        if isinstance(image, BadSample):
            log_skipped(image)
            return {"image": np.zeros((0,), "float32"), "index": -1, "reason": image.reason}
        return {"image": image, "index": index, "reason": ""}


def _collate(samples):
    good = [s for s in samples if s["index"] >= 0]
    images = np.stack([s["image"] for s in good]) if good else np.zeros((0, 3, 1, 1), "float32")
    return {"image": images, "index": np.array([s["index"] for s in good], dtype="int64"),
            "reasons": [s["reason"] for s in samples if s["index"] < 0]}


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's rows (different counts allowed), concatenated in rank order; a copy in one process."""
    if get_world_size() == 1:
        return rows
    counts = gather_row_counts(len(rows))
    padded = np.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows
    parts: List[paddle.Tensor] = []
    dist.all_gather(parts, paddle.to_tensor(padded))
    return np.concatenate([part.numpy()[:count] for part, count in zip(parts, counts)])


def _in_item_order(features: np.ndarray, indices: np.ndarray):
    order = np.argsort(indices, kind="stable")
    return features[order], indices[order]


def image_features(model, paths: Sequence[str], transform: Callable, batch_size: int, num_workers: int = 0,
                   normalize: bool = True) -> ImageFeatures:
    """Features of the images at `paths`, this rank encoding every world-th one, then gathered."""
    mine = list(range(get_rank(), len(paths), get_world_size()))
    files = _ImageFiles(paths, mine, transform)
    if num_workers:
        # data_worker_init: a group SIGTERM during training-time evaluation is the trainer's to handle
        loader = paddle.io.DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                                      worker_init_fn=data_worker_init)
    else:  # not Paddle's reader thread, which hangs the run when it raises (see main_thread_batches)
        batches = paddle.io.BatchSampler(files, batch_size=batch_size)
        loader = main_thread_batches(files, _collate, batch_sampler=batches)
    features, kept, skipped = [], [], Counter()
    with evaluation_mode(model):
        for batch in loader:
            skipped.update(batch["reasons"])
            if len(batch["index"]):
                features.append(model.encode_image(paddle.to_tensor(batch["image"]), normalize=normalize).numpy())
                kept.append(np.asarray(batch["index"]))
    dim = model.config.embed_dim
    local = np.concatenate(features) if features else np.zeros((0, dim), "float32")
    indices = np.concatenate(kept) if kept else np.zeros((0,), "int64")
    gathered, order = _in_item_order(gather_rows(local), gather_rows(indices))
    if get_world_size() > 1:
        tables: List = []
        dist.all_gather_object(tables, dict(skipped))
        skipped = sum((Counter(table) for table in tables), Counter())
    if skipped:
        logger.warning("skipped %s unreadable images: %s", sum(skipped.values()), dict(skipped))
    return ImageFeatures(gathered, order, skipped)


def text_features(model, tokenizer, captions: Sequence[str], batch_size: int, normalize: bool = True) -> np.ndarray:
    """Features [len(captions), D] of the captions tokenized by the model's `tokenizer`, split over ranks
    and gathered in caption order."""
    mine = np.arange(get_rank(), len(captions), get_world_size())
    parts = []
    with evaluation_mode(model):
        for start in range(0, len(mine), batch_size):
            chunk = [captions[i] for i in mine[start:start + batch_size]]
            ids = paddle.to_tensor(tokenizer(chunk))
            parts.append(model.encode_text(ids, normalize=normalize).numpy())
    local = np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), "float32")
    features, _ = _in_item_order(gather_rows(local), gather_rows(mine.astype("int64")))
    return features
