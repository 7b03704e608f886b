"""Which kernels the layers compute with: eager (tuned for Paddle's CPU kernels) or export.

Eager CPU runs are fastest with the bias inside the GEMM (addmm) and token-major einsum attention.
A graph exported for Paddle Inference wants the opposite: plain matmul + add and head-major matmuls,
which its oneDNN passes fuse into fc / matmul kernels (bf16 AMX included; addmm and einsum have no
oneDNN kernel and stay in slow fp32). Tracing under `export_kernels()` picks the export ones.
"""

import contextlib
import contextvars

_EXPORTING = contextvars.ContextVar("paddlemix_export_kernels", default=False)


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
