"""What paddlemix's entry scripts (examples/, the CLI) and benchmarks set up first, for the whole
process, before any tensor op: glibc malloc that keeps freed memory (cpu_memory), and on AMD CPUs
the AVX2 kernels of Paddle's MKL. Importing paddlemix sets neither; a script of your own calls
`prepare_cpu_process()` itself.

Paddle 3.3.1's CPU wheel bundles an MKL (mklml) older than 2020.1, which runs its generic kernels on
AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 selects the AVX2 ones; MKL reads the variable at its first call.
Measured on a 2-core AMD EPYC (AVX2), one thread, [400, 768] x [768, 3072]: 19 GFLOP/s without it,
60 with it (torch 61-69); the clip-roberta training step went from 0.44 to 1.21 images/s
(benchmarks/bench_dual_encoder.py). On Intel CPUs MKL picks its best kernels itself, and the variable
would hold it back, so it is set on AMD only, never over a value the user gave, and not with
PPMIX_MKL_AVX2_ON_AMD=0.
"""

import os

from .cpu_memory import keep_freed_cpu_memory
from .log import logger

MKL_CPU_TYPE_VARIABLE, MKL_CPU_TYPE_AVX2 = "MKL_DEBUG_CPU_TYPE", "5"
MKL_OPT_OUT_VARIABLE = "PPMIX_MKL_AVX2_ON_AMD"


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ('AuthenticAMD', 'GenuineIntel'); '' where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def cpu_signature() -> str:
    """What code built with -march=native depends on: the CPU's vendor, model and instruction-set flags
    (/proc/cpuinfo's first processor; '' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            fields = {}
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return ""
    flags = " ".join(sorted(fields.get("flags", "").split()))
    return f"{fields.get('vendor_id', '')}|{fields.get('model name', '')}|{flags}"


def use_avx2_mkl_kernels_on_amd() -> bool:
    """Set MKL_DEBUG_CPU_TYPE=5 on an AMD CPU (see the module docstring); whether it is set now."""
    if os.environ.get(MKL_OPT_OUT_VARIABLE, "1") == "0" or MKL_CPU_TYPE_VARIABLE in os.environ:
        return os.environ.get(MKL_CPU_TYPE_VARIABLE) == MKL_CPU_TYPE_AVX2
    if cpu_vendor() != "AuthenticAMD":
        return False
    os.environ[MKL_CPU_TYPE_VARIABLE] = MKL_CPU_TYPE_AVX2
    logger.debug("AMD CPU: %s=%s selects the AVX2 kernels of Paddle's MKL", MKL_CPU_TYPE_VARIABLE, MKL_CPU_TYPE_AVX2)
    return True


def prepare_cpu_process() -> None:
    """Both settings above, first thing in a script."""
    keep_freed_cpu_memory()
    use_avx2_mkl_kernels_on_amd()
