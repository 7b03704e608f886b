"""fp32 GEMM throughput of Paddle's matmul beside numpy's and torch's, on the shapes of a ViT-B-32 MLP, in one run.

    python benchmarks/bench_gemm.py --peer ../reference/.venv/bin/python
    python benchmarks/bench_gemm.py --threads 1 --repeats 20

Each shape is [m, k] x [k, n] as a forward Linear computes it, plus the two products of its backward
([m, n] x [n, k] for the input gradient, [k, m] x [m, n] for the weight gradient). Paddle runs twice,
each in its own process (MKL reads its kernel choice once): as installed, and with what
`paddlemix.utils.cpu_process.prepare_cpu_process()` sets (on AMD, MKL_DEBUG_CPU_TYPE=5). numpy
and torch (the --peer interpreter) run in processes of their own too; never two at the same time. GFLOP/s =
2mnk / median time. The CPU model and flags are printed first: figures compare on one CPU only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# (m, k, n): ViT-B-32 at batch 32 (50 tokens per image): MLP up and down, attention in-projection
SHAPES = ((1600, 768, 3072), (1600, 3072, 768), (1600, 768, 2304))
FRAMEWORKS = ("paddle", "numpy", "torch")


def products(m: int, k: int, n: int):
    """(name, left shape, right shape) of one Linear's forward and backward GEMMs."""
    return (("forward", (m, k), (k, n)), ("input grad", (m, n), (n, k)), ("weight grad", (k, m), (m, n)))


def median_gflops(matmul, left, right, repeats: int) -> float:
    matmul(left, right)  # warm-up: library initialisation, page faults of the output
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(left, right)
        times.append(time.perf_counter() - start)
    m, k = left.shape
    return 2 * m * k * right.shape[1] / float(np.median(times)) / 1e9


def measure(framework: str, threads: int, repeats: int) -> dict:
    """{"m,k,n/product": GFLOP/s} of `framework` in this process."""
    rng = np.random.default_rng(0)
    if framework == "paddle":
        import paddle

        paddle.base.core.set_num_threads(threads)

        def matmul(a, b):
            return paddle.matmul(a, b).numpy()  # .numpy(): wait for the result

        convert = paddle.to_tensor
    elif framework == "torch":
        import torch

        torch.set_num_threads(threads)
        matmul, convert = torch.matmul, torch.from_numpy
    else:
        matmul, convert = np.matmul, np.ascontiguousarray
    figures = {}
    for m, k, n in SHAPES:
        for name, left, right in products(m, k, n):
            a, b = (convert(rng.standard_normal(shape, dtype=np.float32)) for shape in (left, right))
            figures[f"{m}x{k}x{n} {name}"] = median_gflops(matmul, a, b, repeats)
    return figures


def cpu_description() -> str:
    """lscpu's model name and the CPU flags that decide GEMM kernels."""
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [flag for flag in flags if flag.startswith(("avx", "amx", "fma"))]
    return f"{fields.get('Model name', '?').strip()} ({' '.join(wanted)})"


def in_subprocess(python: str, framework: str, args, **env) -> dict:
    """`measure` in a fresh `python` process; numpy's BLAS takes its threads from the environment."""
    command = [python, str(Path(__file__).resolve()), "--framework-side", framework, "--threads",
               str(args.threads), "--repeats", str(args.repeats)]
    threads = {name: str(args.threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **threads, **env}, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every framework")
    parser.add_argument("--repeats", type=int, default=10, help="timed products per shape")
    parser.add_argument("--peer", default=None, help="python of the reference venv (torch)")
    parser.add_argument("--framework-side", choices=FRAMEWORKS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.framework_side:
        if args.framework_side == "paddle" and os.environ.get("BENCH_GEMM_PREPARED") == "1":
            from paddlemix.utils.cpu_process import prepare_cpu_process

            prepare_cpu_process()
        print(json.dumps(measure(args.framework_side, args.threads, args.repeats)))
        return

    print(f"CPU {cpu_description()}, {args.threads} threads, fp32, GFLOP/s (median of {args.repeats})")
    ours = "paddle (paddlemix)"
    columns = {"paddle (as installed)": in_subprocess(sys.executable, "paddle", args, PPMIX_MKL_AVX2_ON_AMD="0"),
               ours: in_subprocess(sys.executable, "paddle", args, BENCH_GEMM_PREPARED="1"),
               "numpy": in_subprocess(sys.executable, "numpy", args)}
    if args.peer:
        columns["torch"] = in_subprocess(args.peer, "torch", args)
    names = list(columns)
    print(f"{'product':28}" + "".join(f"{name:>24}" for name in names) + ("   ratio" if args.peer else ""))
    for key in columns["numpy"]:
        row = f"{key:28}" + "".join(f"{columns[name][key]:24.1f}" for name in names)
        if args.peer:
            row += f"   {columns[ours][key] / columns['torch'][key]:5.2f}"
        print(row)
    if args.peer:
        print(f"ratio: {ours} / torch")


if __name__ == "__main__":
    main()
