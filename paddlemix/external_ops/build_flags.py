"""What both builds of the fused ops (JIT in __init__.py, install in setup.py) compile, and how."""

from pathlib import Path

MODULE_NAME = "paddlemix_fused_ops"
SOURCE_DIRECTORY = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ["fused_ln.cc", "fused_bias_gelu.cc"]
CUDA_SOURCES = ["fused_ops_cuda.cu"]
# Built where it runs, so the host's vector units are used (AVX-512 / AVX2 where present)
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17"]
LINK_FLAGS = ["-fopenmp"]


def source_paths(with_cuda: bool) -> list:
    """The op files, and the CUDA kernels with `with_cuda` (Paddle built with CUDA)."""
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])
    return [str(SOURCE_DIRECTORY / name) for name in names]
