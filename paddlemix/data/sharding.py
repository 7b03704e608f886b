"""Which part of a stream this reader takes: one shard per (rank, dataloader worker) pair."""

from typing import Sequence, Tuple, TypeVar

import paddle

from ..utils.distributed import get_rank, get_world_size

T = TypeVar("T")


def reader_shard() -> Tuple[int, int]:
    """(index, count) of this reader among all ranks x dataloader workers.

    Rank-major: rank r's worker w is shard r * workers + w, so the shards of all readers are
    disjoint and together cover everything.
    """
    worker = paddle.io.get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return get_rank() * workers + worker_id, get_world_size() * workers


def take_shard(items: Sequence[T], index: int, count: int) -> Sequence[T]:
    """Every `count`-th item starting at `index`: disjoint across indices, complete together."""
    return items[index::count]
