"""Which kernels the layers compute with: eager (tuned for CPU) or export, and the GEMMs' precision.

Eager CPU runs are fastest with paddlemix's fused ops (external_ops), the bias inside the GEMM and
token-major attention. A graph exported for Paddle Inference wants plain matmul + add and head-major
matmuls, which its oneDNN passes fuse into fc / matmul kernels (bf16 AMX included; addmm, einsum and
custom ops have no oneDNN kernel there). Tracing under `export_kernels()` picks the export ones.

`bf16_gemm_scope()`: within it, the fused Linear's GEMMs may multiply in bfloat16 (float32 weights,
activations and sums) where the CPU has bf16 instructions (AMX, AVX512-BF16): `--bf16` on CPU.
"""

import contextlib
import contextvars

_EXPORTING = contextvars.ContextVar("paddlemix_export_kernels", default=False)
_BF16_GEMMS = contextvars.ContextVar("paddlemix_bf16_gemms", default=False)


@contextlib.contextmanager
def export_kernels():
    """Within this block, layers compute with the ops a Paddle Inference graph should contain."""
    token = _EXPORTING.set(True)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def exporting() -> bool:
    return _EXPORTING.get()


@contextlib.contextmanager
def bf16_gemm_scope(enabled: bool = True):
    """Within this block (with `enabled`), the fused Linear's GEMMs multiply in bfloat16 where the CPU can."""
    token = _BF16_GEMMS.set(enabled)
    try:
        yield
    finally:
        _BF16_GEMMS.reset(token)


def bf16_gemms() -> bool:
    return _BF16_GEMMS.get()
