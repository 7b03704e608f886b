"""Start-up checks of what this device can run, shared by the trainer and the evaluator."""

import os

import paddle

from .log import logger, warn_once


def gpu_available() -> bool:
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def cpu_supports_bf16() -> bool:
    """Whether this Paddle build has oneDNN and the CPU has native bfloat16 (AVX512-BF16 or AMX)."""
    core = paddle.base.core
    return core.is_compiled_with_onednn() and core.supports_bfloat16_fast_performance()


def cpu_bf16_gemms(args) -> bool:
    """--bf16 on a CPU with bf16 instructions: the fused Linears' GEMMs multiply in bfloat16 there
    (layers.kernels.bf16_gemm_scope), with float32 weights, activations and sums."""
    return bool(args.bf16) and not gpu_available() and cpu_supports_bf16()


def check_platform(args) -> None:
    """Refuse what this device cannot do, at start-up; say once what will silently not happen.
    args: the parsed (PaddleNLP) TrainingArguments of the trainer or the evaluator."""
    on_gpu = gpu_available()
    if not on_gpu:
        # Paddle runs one intra-op thread unless told otherwise; share the cores among the processes.
        threads = max(1, (os.cpu_count() or 1) // max(1, args.world_size))
        paddle.base.core.set_num_threads(threads)
        logger.info("CPU training: %d threads per process", threads)
    if cpu_bf16_gemms(args):
        logger.info("--bf16 on this CPU: the Linears' GEMMs multiply in bfloat16 (float32 weights, activations "
                    "and sums)")
    elif not on_gpu and (args.fp16 or args.bf16):
        warn_once("--fp16/--bf16 on CPU: Paddle's AMP runs on GPUs only, and this CPU has no bfloat16 "
                  "instructions (AMX, AVX512-BF16) for paddlemix's bf16 GEMMs: this run trains in float32")
    if not on_gpu:
        args.fp16 = args.bf16 = False  # Paddle's AMP is GPU-only
    sharding = args.requested_sharding
    if not on_gpu and ("stage2" in sharding or "stage3" in sharding):
        raise RuntimeError(
            f"--sharding {sharding}: stage2/stage3 sharding runs on GPUs only (Paddle's CPU build has no "
            "reduce_scatter for it). Use --sharding stage1, or plain data parallel (no --sharding), on CPU"
        )
    if sharding and args.world_size == 1:
        warn_once(f"--sharding {sharding} has nothing to shard in a single process: ignored")
