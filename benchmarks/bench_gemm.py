"""fp32 GEMM throughput of a Linear (x @ W + b, forward and backward) in paddlemix's onednn_linear op,
Paddle's own ops, numpy and torch, on the shapes of a ViT-B-32 MLP, in one run.

    python benchmarks/bench_gemm.py --peer ../reference/.venv/bin/python
    python benchmarks/bench_gemm.py --threads 1 --repeats 20

Each shape is x [m, k] @ W [k, n] + b as a forward Linear computes it; "forward + backward" adds the
two products of its backward ([m, n] x [n, k] for the input gradient, [k, m] x [m, n] for the weight
gradient) and the bias gradient. Columns, each in its own process (MKL reads its kernel choice once),
never two at the same time:
- paddle (as installed): Paddle's ops (F.linear, autograd), MKL as the wheel leaves it;
- paddle (paddlemix setting): the same after `paddlemix.utils.cpu_process.prepare_cpu_process()`
  (on AMD, MKL_DEBUG_CPU_TYPE=5);
- paddlemix op: `paddlemix.models.layers.linear.linear`, i.e. the onednn_linear op (oneDNN's matmul
  primitive, bias as an epilogue);
- numpy (its OpenBLAS) and torch (F.linear and autograd, from the --peer interpreter).
GFLOP/s = 2mnk per product / median time. The CPU model, flags and threads are printed first:
figures compare on one CPU only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from timing import machine_line

# (m, k, n): ViT-B-32 at batch 32 (50 tokens per image): MLP up and down, attention in-projection
SHAPES = ((1600, 768, 3072), (1600, 3072, 768), (1600, 768, 2304))
FRAMEWORKS = ("paddle", "paddlemix", "numpy", "torch")
PHASES = {"forward": 1, "forward + backward": 3}  # products per phase


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: library initialisation, primitive creation, page faults of the outputs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def linear_steps(framework: str, threads: int, x, weight, bias, grad):
    """(forward, forward + backward) callables of one Linear in `framework`, on numpy inputs."""
    if framework in ("paddle", "paddlemix"):
        import paddle
        import paddle.nn.functional as F

        from paddlemix.models.layers.linear import linear

        paddle.base.core.set_num_threads(threads)
        apply = linear if framework == "paddlemix" else F.linear
        tensors = [paddle.to_tensor(v) for v in (x, weight, bias)]
        dy = paddle.to_tensor(grad)

        def forward():
            with paddle.no_grad():
                apply(*tensors).numpy()  # .numpy(): wait for the result

        def forward_backward():
            for tensor in tensors:
                tensor.stop_gradient = False
            apply(*tensors).backward(dy)
            tensors[0].grad.numpy()
            for tensor in tensors:
                tensor.clear_gradient()

        return forward, forward_backward
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        xt, wt, bt = (torch.from_numpy(v).requires_grad_() for v in (x, weight.T.copy(), bias))
        dy = torch.from_numpy(grad)

        def forward():
            with torch.no_grad():
                torch.nn.functional.linear(xt, wt, bt)

        def forward_backward():
            torch.nn.functional.linear(xt, wt, bt).backward(dy)
            xt.grad = wt.grad = bt.grad = None

        return forward, forward_backward

    def numpy_forward():
        return x @ weight + bias

    def numpy_forward_backward():
        numpy_forward()
        grad @ weight.T, x.T @ grad, grad.sum(0)

    return numpy_forward, numpy_forward_backward


def measure(framework: str, threads: int, repeats: int) -> dict:
    """{"m x k x n / phase": GFLOP/s} of `framework` in this process."""
    rng = np.random.default_rng(0)
    figures = {}
    for m, k, n in SHAPES:
        x, weight, grad = (rng.standard_normal(shape, dtype=np.float32) for shape in ((m, k), (k, n), (m, n)))
        bias = rng.standard_normal(n, dtype=np.float32)
        steps = dict(zip(PHASES, linear_steps(framework, threads, x, weight, bias, grad)))
        for phase, products in PHASES.items():
            figures[f"{m}x{k}x{n} {phase}"] = products * 2 * m * k * n / median_seconds(steps[phase], repeats) / 1e9
    return figures


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
        if args.framework_side in ("paddle", "paddlemix") and os.environ.get("BENCH_GEMM_PREPARED") == "1":
            from paddlemix.utils.cpu_process import prepare_cpu_process

            prepare_cpu_process()
        print(json.dumps(measure(args.framework_side, args.threads, args.repeats)))
        return

    print(f"{machine_line(args.threads)}, fp32, GFLOP/s (median of {args.repeats})")
    ours = "paddlemix op"
    columns = {"paddle (as installed)": in_subprocess(sys.executable, "paddle", args, PPMIX_MKL_AVX2_ON_AMD="0"),
               "paddle (paddlemix setting)": in_subprocess(sys.executable, "paddle", args, BENCH_GEMM_PREPARED="1"),
               ours: in_subprocess(sys.executable, "paddlemix", args, BENCH_GEMM_PREPARED="1"),
               "numpy": in_subprocess(sys.executable, "numpy", args)}
    if args.peer:
        columns["torch"] = in_subprocess(args.peer, "torch", args)
    names = list(columns)
    print(f"{'linear':34}" + "".join(f"{name:>28}" for name in names) + ("   ratio" if args.peer else ""))
    for key in columns["numpy"]:
        row = f"{key:34}" + "".join(f"{columns[name][key]:28.1f}" for name in names)
        if args.peer:
            row += f"   {columns[ours][key] / columns['torch'][key]:5.2f}"
        print(row)
    if args.peer:
        print(f"ratio: {ours} / torch")


if __name__ == "__main__":
    main()
