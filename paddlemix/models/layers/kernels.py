"""Which kernels the layers compute with: eager (tuned for CPU) or export, and the GEMMs' precision.

Eager CPU runs are fastest with paddlemix's fused ops (external_ops), the bias inside the GEMM and
token-major attention. A graph exported for Paddle Inference wants plain matmul + add and head-major
matmuls, which its oneDNN passes fuse into fc / matmul kernels (bf16 AMX included; addmm, einsum and
custom ops have no oneDNN kernel there). Tracing under `export_kernels()` picks the export ones.

`paddle_ops_only()`: within it, Paddle's ops only (blocks under recompute, whose saved-tensor hooks
custom ops do not take). `bf16_gemm_scope()`: within it, the fused Linear's GEMMs may multiply in bfloat16 (float32 weights,
activations and sums) where the CPU has bf16 instructions (AMX, AVX512-BF16): `--bf16` on CPU.
"""

import contextlib
import contextvars

_EXPORTING = contextvars.ContextVar("paddlemix_export_kernels", default=False)
_BF16_GEMMS = contextvars.ContextVar("paddlemix_bf16_gemms", default=False)
_PADDLE_OPS_ONLY = contextvars.ContextVar("paddlemix_paddle_ops_only", default=False)


@contextlib.contextmanager
def _set_within(variable: contextvars.ContextVar, value):
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def export_kernels():
    """Within this block, layers compute with the ops a Paddle Inference graph should contain."""
    return _set_within(_EXPORTING, True)


def exporting() -> bool:
    return _EXPORTING.get()


def paddle_ops_only():
    """Within this block, layers use Paddle's own ops, not paddlemix's custom ones (blocks under recompute)."""
    return _set_within(_PADDLE_OPS_ONLY, True)


def custom_ops_allowed() -> bool:
    """Whether layers may call paddlemix's custom ops here: not while exporting, not under paddle_ops_only."""
    return not (_EXPORTING.get() or _PADDLE_OPS_ONLY.get())


def bf16_gemm_scope(enabled: bool = True):
    """Within this block (with `enabled`), the fused Linear's GEMMs multiply in bfloat16 where the CPU can."""
    return _set_within(_BF16_GEMMS, enabled)


def bf16_gemms() -> bool:
    return _BF16_GEMMS.get()
