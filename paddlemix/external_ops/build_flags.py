"""What both builds of the fused ops (JIT in __init__.py, install in setup.py) compile, and how."""

import platform
from pathlib import Path

MODULE_NAME = "paddlemix_fused_ops"
SOURCE_DIRECTORY = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ["fused_ln.cc", "fused_bias_gelu.cc", "onednn_linear.cc", "token_embedding.cc", "cpu_attention.cc",
               "rope.cc", "cpu_adamw.cc"]
CUDA_SOURCES = ["fused_ops_cuda.cu"]
# Built where it runs, so the host's vector units are used (AVX-512 / AVX2 where present). On x86,
# GCC's loops use 512-bit vectors where the CPU has them (measured: exact GELU's backward 25% faster).
# -fno-trapping-math (no change to any result: FP exceptions are never read) lets GCC vectorise the
# activations' loops, whose float-to-int conversion could trap: 2.7 -> 0.5 ns per element for GELU.
# -fno-math-errno (errno is never read either) lets it vectorise square roots (cpu_adamw).
CXX_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"] + (
    ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])
NVCC_FLAGS = ["-O3", "-std=c++17"]  # as the harness is built: its accuracy checks hold for this build


def link_flags() -> list:
    """Paddle's own oneDNN (libdnnl.so.3, for onednn_linear) and OpenMP: its Intel OpenMP (libiomp5)
    where its wheel bundles one, else GCC's.

    The ops' threads then come from the same pool as Paddle's MKL / oneDNN kernels. Two OpenMP
    runtimes on the same cores spin against each other after every parallel region: measured on 2
    cores, a [1600, 768] x [768, 3072] matmul followed by fused_bias_gelu on its output took 27.3 ms
    with GCC's libgomp and 20.8 ms with libiomp5 (the two alone: 17.3 + 1.1 ms).
    """
    import paddle

    libraries = Path(paddle.__file__).resolve().parent / "libs"
    onednn = [f"-L{libraries}", "-l:libdnnl.so.3", f"-Wl,-rpath,{libraries}"]
    if (libraries / "libiomp5.so").exists():
        return onednn + ["-l:libiomp5.so"]
    return onednn + ["-fopenmp"]


def source_paths(with_cuda: bool) -> list:
    """The op files, and the CUDA kernels with `with_cuda` (Paddle built with CUDA)."""
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])
    return [str(SOURCE_DIRECTORY / name) for name in names]
