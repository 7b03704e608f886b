"""Start-up checks of what this device can run, shared by the trainer and the evaluator."""

import os

import paddle

from .log import logger, warn_once


def check_platform(args) -> None:
    """Refuse what this device cannot do, at start-up; say once what will silently not happen.
    args: the parsed (PaddleNLP) TrainingArguments of the trainer or the evaluator."""
    on_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if not on_gpu:
        # Paddle runs one intra-op thread unless told otherwise; share the cores among the processes.
        threads = max(1, (os.cpu_count() or 1) // max(1, args.world_size))
        paddle.base.core.set_num_threads(threads)
        logger.info("CPU training: %d threads per process", threads)
    if not on_gpu and (args.fp16 or args.bf16):
        warn_once("--fp16/--bf16 ask for AMP, which Paddle runs on GPUs only: this CPU run trains in float32")
        args.fp16 = args.bf16 = False
    sharding = args.requested_sharding
    if not on_gpu and ("stage2" in sharding or "stage3" in sharding):
        raise RuntimeError(
            f"--sharding {sharding}: stage2/stage3 sharding runs on GPUs only (Paddle's CPU build has no "
            "reduce_scatter for it). Use --sharding stage1, or plain data parallel (no --sharding), on CPU"
        )
    if sharding and args.world_size == 1:
        warn_once(f"--sharding {sharding} has nothing to shard in a single process: ignored")
