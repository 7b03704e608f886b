"""Rank queries, data-loader worker set-up, and differentiable feature exchanges for contrastive losses.

Both gathers concatenate every rank's `x` along dim 0 (ranks may hold different numbers of
rows: a batch that lost bad samples is smaller); they differ only in how the gradient of the
gathered tensor reaches `x`. The neighbour exchanges pass a tensor one step around the ring of
ranks (the sigmoid loss's text features), and its gradient one step back.
"""

import atexit
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Tuple

import paddle
import paddle.distributed as dist


def get_rank() -> int:
    """This process's rank in the global group; 0 when distributed is not initialised."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the global group; 1 when distributed is not initialised.

    paddle.distributed.get_world_size() alone would report the launcher's trainer count
    before init_parallel_env() has run, which is not a group we can communicate over.
    """
    return dist.get_world_size() if dist.is_initialized() else 1


def run_script(entry: Callable[..., object], *args, **kwargs) -> None:
    """Run `entry(*args, **kwargs)` as a script's main; a multi-process run then ends in step.

    Every rank waits at a barrier, runs the Python exit handlers (dataloader workers, logging),
    flushes and leaves with os._exit(0), without C++ static destructors. Rank 0's process hosts the
    TCP store in a libuv thread; when a peer disconnected while rank 0 ran its static destructors,
    that thread logged through the already destroyed glog and aborted (SIGABRT after the work was
    done and saved). An exception still ends the process the usual way, with its traceback.
    """
    entry(*args, **kwargs)
    if get_world_size() == 1:
        return
    dist.barrier()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def data_worker_init(worker_id: int) -> None:
    """`worker_init_fn` of paddlemix's training DataLoader: a worker process leaves stopping to the
    process it serves.

    Schedulers (Slurm, Kubernetes) and Ctrl-C signal the whole process group, workers included; a
    worker killed by SIGTERM made the DataLoader raise "DataLoader process ... killed by signal" in
    the trainer before it could save. So a worker ignores SIGINT, and SIGTERM from anyone but its
    parent: the parent's own SIGTERM (multiprocessing terminates its daemon workers at exit) still
    ends it, which a plain SIG_IGN would turn into a hang at exit. On Linux the kernel also kills a
    worker whose parent dies (prctl PR_SET_PDEATHSIG), so a trainer killed outright (SIGKILL, out of
    memory) leaves no workers behind. Elsewhere only SIGINT is ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    # blocked in this (the worker's only) thread and so in every thread it starts; one thread
    # takes the signals and looks at who sent them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parents_sigterm, args=(parent, worker_id), daemon=True,
                     name="paddlemix-worker-sigterm").start()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logging.getLogger("paddlemix").warning(
            "data worker %d: prctl(PR_SET_PDEATHSIG) failed (errno %d); it may outlive a killed trainer",
            worker_id, ctypes.get_errno())


def _exit_on_parents_sigterm(parent: int, worker_id: int) -> None:
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if sender == parent or os.getppid() != parent:
            os._exit(0)
        logging.getLogger("paddlemix").debug("data worker %d: SIGTERM from pid %d ignored (the trainer stops it)",
                                             worker_id, sender)


def gather_row_counts(rows: int) -> List[int]:
    """Every rank's number of rows, in rank order ([rows] in a single process)."""
    if get_world_size() == 1:
        return [rows]
    counts: List[paddle.Tensor] = []
    dist.all_gather(counts, paddle.to_tensor([rows], dtype="int64"))
    return [int(count) for count in counts]


def _gather_rows(x: paddle.Tensor) -> Tuple[paddle.Tensor, List[int]]:
    """(all ranks' rows of x concatenated in rank order, every rank's row count); pads to the largest
    rank for the collective."""
    counts = gather_row_counts(x.shape[0])
    longest = max(counts)
    if x.shape[0] < longest:
        x = paddle.concat([x, paddle.zeros([longest - x.shape[0], *x.shape[1:]], dtype=x.dtype)])
    parts: List[paddle.Tensor] = []
    dist.all_gather(parts, x)
    return paddle.concat([part[:count] for part, count in zip(parts, counts)], axis=0), counts


def _gather_concat(ctx, x: paddle.Tensor) -> paddle.Tensor:
    gathered, ctx.counts = _gather_rows(x)
    return gathered


def _own_slice(ctx, grad: paddle.Tensor) -> paddle.Tensor:
    start = sum(ctx.counts[: get_rank()])
    return grad[start:start + ctx.counts[get_rank()]]


class _AllGatherWithGrad(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        return _gather_concat(ctx, x)

    @staticmethod
    def backward(ctx, grad):
        # Every rank's loss may depend on this rank's rows, so their gradients are summed
        # before each rank keeps its own slice. all_reduce works in place, so reduce a copy
        # rather than a buffer autograd may still hold.
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return _own_slice(ctx, grad)


class _AllGatherLocalGrad(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        return _gather_concat(ctx, x)

    @staticmethod
    def backward(ctx, grad):
        # Only valid when every rank computes the same loss L from the gathered tensor
        # (ClipLoss with local_loss=False). Then dL/d(own rows) is already exact here, and
        # the sum that _AllGatherWithGrad would communicate is just world_size copies of it.
        # Multiplying by world_size keeps the tower gradients exact after DataParallel
        # averages over the ranks; open_clip's gather without grad omits this factor and
        # trains the towers with gradients world_size times too small.
        return _own_slice(ctx, grad) * get_world_size()


def all_gather_with_grad(x: paddle.Tensor) -> paddle.Tensor:
    """Concatenate `x` [N, ...] from all ranks into [world_size * N, ...].

    Backward all-reduces (sums) the incoming gradient over ranks and returns this rank's
    [N, ...] slice, so losses that differ per rank still get exact gradients.
    """
    return _AllGatherWithGrad.apply(x)


def all_gather_local_grad(x: paddle.Tensor) -> paddle.Tensor:
    """Concatenate `x` [N, ...] from all ranks into [world_size * N, ...], no backward comm.

    Backward returns this rank's [N, ...] slice of the gradient times world_size; exact only
    when every rank computes the same loss from the gathered tensor.
    """
    return _AllGatherLocalGrad.apply(x)


def all_gather_rows(x: paddle.Tensor) -> paddle.Tensor:
    """Concatenate `x` [N, ...] from all ranks (N may differ per rank), without gradient: for values
    that carry none, such as the int64 pair keys the contrastive loss gathers beside the features."""
    return _gather_rows(x)[0]


# Point-to-point messages go through one two-rank group per pair of ring neighbours. On gloo, Paddle
# matches a send with a recv by a per-group counter of the calls each rank has made, and its sends
# block until the peer receives: in the global group a ring's messages pair the wrong calls and
# time out. In a pair's own group, with rank 0 sending first and every other rank receiving first,
# the counters agree and no cycle of blocked sends forms. (Tested on 2, 3 and 4 CPU processes.)
_PAIR_GROUPS: Dict[Tuple[int, int], object] = {}


def _pair_group(peer: int):
    if not _PAIR_GROUPS:  # every rank creates every pair's group, in the same order (new_group is collective)
        world = get_world_size()
        for rank in range(world):
            pair = tuple(sorted((rank, (rank + 1) % world)))
            if pair not in _PAIR_GROUPS:
                _PAIR_GROUPS[pair] = dist.new_group(list(pair))
    return _PAIR_GROUPS[tuple(sorted((get_rank(), peer)))]


def _pass_along(tensor: paddle.Tensor, to_rank: int, from_rank: int, received_shape: List[int]) -> paddle.Tensor:
    """Send `tensor` to `to_rank` and return what `from_rank` sends (of `received_shape`): one step of
    every rank passing a tensor the same way around the ring."""
    received = paddle.empty(received_shape, dtype=tensor.dtype)
    send_group, receive_group = _pair_group(to_rank), _pair_group(from_rank)
    if get_rank() == 0:
        dist.send(tensor, to_rank, group=send_group)
        dist.recv(received, from_rank, group=receive_group)
    else:
        dist.recv(received, from_rank, group=receive_group)
        dist.send(tensor, to_rank, group=send_group)
    return received


class _NeighbourExchange(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, tensor, to_rank, from_rank, received_rows):
        ctx.to_rank, ctx.from_rank, ctx.rows = to_rank, from_rank, tensor.shape[0]
        return _pass_along(tensor.contiguous(), to_rank, from_rank, [received_rows, *tensor.shape[1:]])

    @staticmethod
    def backward(ctx, grad):
        # the gradient of what came from `from_rank` goes back to it; ours comes back from `to_rank`
        return _pass_along(grad.contiguous(), ctx.from_rank, ctx.to_rank, [ctx.rows, *grad.shape[1:]])


def neighbour_exchange(tensor: paddle.Tensor, to_rank: int, from_rank: int, received_rows: int) -> paddle.Tensor:
    """Send `tensor` [rows, ...] to `to_rank`, receive [received_rows, ...] from `from_rank`, when every
    rank calls this with its neighbours on the same side. Backward sends the received tensor's
    gradient back to `from_rank` and returns the one `to_rank` sends back for `tensor`."""
    return _NeighbourExchange.apply(tensor, to_rank, from_rank, received_rows)


def neighbour_exchange_bidir(to_left: paddle.Tensor, to_right: paddle.Tensor, left_rows: int,
                             right_rows: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Both directions at once: `to_left` goes to rank - 1 and `to_right` to rank + 1 (mod world size);
    returns (what rank + 1 sent left, of `right_rows` rows; what rank - 1 sent right, of `left_rows`)."""
    rank, world = get_rank(), get_world_size()
    left, right = (rank - 1) % world, (rank + 1) % world
    from_right = neighbour_exchange(to_left, left, right, right_rows)
    from_left = neighbour_exchange(to_right, right, left, left_rows)
    return from_right, from_left
