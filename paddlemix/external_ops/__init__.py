"""Custom operators, built on first use with Paddle's C++ extension toolchain (JIT) and cached.

`fused_ops()` returns the compiled module (op `fused_ln`: layer norm over the last dimension with
its row statistics, forward and backward on CPU for float32/float64), or None where it cannot be
built here; the models then use Paddle's own layer norm, and one warning per process says why.
Several processes that start together (paddle.distributed.launch) build once: the first takes a
file lock on the build directory, the others wait for it and load the result.
"""

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Optional

import paddle

from ..models.hub import ppmix_home
from ..utils.log import logger

SOURCES = [Path(__file__).parent / "csrc" / "fused_ln_cpu.cc"]
MODULE_NAME = "paddlemix_fused_ops"
# Built where it runs, so the host's vector units are used (AVX-512 / AVX2 where present)
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp"]

_state = {"module": None, "tried": False}


def build_directory() -> Path:
    """$PPMIX_HOME/external_ops/<hash of the sources, flags and Paddle version>."""
    digest = hashlib.sha256(paddle.__version__.encode() + " ".join(CXX_FLAGS).encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return ppmix_home() / "external_ops" / digest.hexdigest()[:16]


def _build():
    from paddle.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others load what it built
        try:
            return load(name=MODULE_NAME, sources=[str(s) for s in SOURCES], build_directory=str(directory),
                        extra_cxx_cflags=CXX_FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fused_ops(required: bool = False):
    """The compiled custom-op module, built once per process; None (after one warning) when it cannot
    be built, or an error with `required`."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = _build()
        except (OSError, RuntimeError, ValueError, ImportError) as err:  # no compiler, headers, disk...
            _state["error"] = err
            logger.warning("paddlemix fused ops unavailable (%s: %s); using Paddle's own layer norm",
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    if _state["module"] is None and required:
        raise RuntimeError(f"paddlemix fused ops could not be built: {_state.get('error')}")
    return _state["module"]


def cpu_threads() -> int:
    """Threads the CPU kernels may use: the cores this process may run on."""
    return len(os.sched_getaffinity(0))


def fused_layer_norm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, epsilon: float,
                     ops=None) -> Optional[paddle.Tensor]:
    """y of the fused_ln op over x's last dimension, or None where the op cannot run x (a GPU tensor
    with this CPU build, a half-precision dtype)."""
    ops = ops or fused_ops()
    if ops is None or not x.place.is_cpu_place() or x.dtype not in (paddle.float32, paddle.float64):
        return None
    return ops.fused_ln(x, weight, bias, epsilon, cpu_threads())[0]
