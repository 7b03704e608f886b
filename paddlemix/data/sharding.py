"""Which part of a stream this reader takes: one shard per (rank, dataloader worker) pair."""

from typing import Sequence, Tuple, TypeVar

import paddle

from ..utils.distributed import get_rank, get_world_size

T = TypeVar("T")


def reader_shard(first_worker: int = 0) -> Tuple[int, int]:
    """(index, count) of this reader among all ranks x dataloader workers.

    Rank-major: rank r's worker w is shard r * workers + (w + first_worker) % workers, so the shards
    of all readers are disjoint and together cover everything. `first_worker` rotates which shard a
    rank's worker 0 reads: the dataloader asks its workers for batches in turn from worker 0, and a
    resumed stream must go on with the shard whose batch would have come next.
    """
    worker = paddle.io.get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return get_rank() * workers + (worker_id + first_worker) % workers, get_world_size() * workers


def take_shard(items: Sequence[T], index: int, count: int) -> Sequence[T]:
    """Every `count`-th item starting at `index`: disjoint across indices, complete together."""
    return items[index::count]
