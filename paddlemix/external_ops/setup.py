"""Build and install paddlemix's fused ops ahead of time, as PaddleMIX users do:

    cd paddlemix/external_ops && python setup.py install

This installs the module `paddlemix_fused_ops`, which `paddlemix.external_ops.fused_ops()` then
loads instead of building it on first use. CPU kernels always; the CUDA kernels too where the
installed Paddle was built with CUDA. Same sources and flags as the JIT build (build_flags.py).
"""

import sys
from pathlib import Path

import paddle
from paddle.utils.cpp_extension import CppExtension, CUDAExtension, setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_flags import CXX_FLAGS, MODULE_NAME, NVCC_FLAGS, SOURCE_DIRECTORY, link_flags, source_paths  # noqa: E402

with_cuda = paddle.is_compiled_with_cuda()
Extension = CUDAExtension if with_cuda else CppExtension
extension = Extension(sources=source_paths(with_cuda), include_dirs=[str(SOURCE_DIRECTORY)],
                      extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, extra_link_args=link_flags())

setup(name=MODULE_NAME, ext_modules=extension)
