"""Speed of paddlemix's fused ops (forward + backward) against Paddle's own ops and torch's.

    python benchmarks/bench_fused_ops.py --peer ../reference/.venv/bin/python

float32, 2 threads each. One step is the forward pass, then the backward pass from a given output
gradient dy (`y.backward(dy)`) into x and the parameters, whose gradients are then dropped (not
zeroed). Layer norm: fused_ln against F.layer_norm; bias + GELU: fused_bias_gelu against
gelu(x + bias), exact erf GELU and QuickGELU. The median of `--steps` timed steps after `--warmup`
untimed ones; torch runs in the peer interpreter afterwards.

Each figure is the step's time less that of the same step with the op replaced by a reshape, in the
same framework: Paddle's backward(dy) first copies dy (1.5 ms for [32, 50, 3072] here), which no
op in a model pays, since a model's backward pass starts from a scalar loss. ratio = the other's
time / the fused op's.
"""

import argparse
import json
import subprocess
import sys
import textwrap

import paddle
import paddle.nn.functional as F

from paddlemix.external_ops import cpu_threads, fused_ops
from paddlemix.utils.cpu_process import prepare_cpu_process

from timing import machine_line, median_rate

CASES = [
    ("layer_norm", (4, 197, 768)),
    ("layer_norm", (8, 257, 1024)),
    ("layer_norm", (32, 50, 768)),
    ("gelu", (4, 197, 768)),
    ("gelu", (8, 257, 1024)),
    ("gelu", (32, 50, 3072)),
    ("quick_gelu", (32, 50, 3072)),
]
PEER_SCRIPT = textwrap.dedent('''
    import json, statistics, sys, time
    import torch
    torch.set_num_threads(2)
    cases, steps, warmup = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def median_ms(step):
        times = []
        for index in range(warmup + steps):
            start = time.perf_counter(); step()
            if index >= warmup: times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    results = []
    for op, shape in cases:
        x, dy = torch.randn(shape, requires_grad=True), torch.randn(shape)
        w, b = torch.ones(shape[-1], requires_grad=True), torch.randn(shape[-1], requires_grad=True)
        def forward(kind):
            if kind == "reshape":
                return x.reshape(shape)
            if kind == "layer_norm":
                return torch.nn.functional.layer_norm(x, shape[-1:], w, b, 1e-5)
            z = x + b
            return z * torch.sigmoid(1.702 * z) if kind == "quick_gelu" else torch.nn.functional.gelu(z)
        def step(kind):
            forward(kind).backward(dy)
            x.grad = w.grad = b.grad = None
        results.append(median_ms(lambda: step(op)) - median_ms(lambda: step("reshape")))
    print(json.dumps(results))
''')


def paddle_ms(op: str, shape, fused: bool, ops, steps: int, warmup: int) -> float:
    """The median step time of `op` less that of a reshape (see above)."""
    x, dy = paddle.randn(shape), paddle.randn(shape)
    w, b = paddle.ones(shape[-1:]), paddle.randn(shape[-1:])
    for tensor in (x, w, b):
        tensor.stop_gradient = False

    def forward(kind):
        if kind == "reshape":
            return x.reshape(shape)
        if kind == "layer_norm":
            return ops.fused_ln(x, w, b, 1e-5, cpu_threads())[0] if fused else F.layer_norm(x, shape[-1], w, b, 1e-5)
        if fused:
            return ops.fused_bias_gelu(x, b, kind == "quick_gelu", cpu_threads())
        z = x + b
        return z * F.sigmoid(1.702 * z) if kind == "quick_gelu" else F.gelu(z)

    def step(kind):
        forward(kind).backward(dy)
        for tensor in (x, w, b):
            tensor.clear_gradient(set_to_zero=False)

    def median_ms(kind):
        return 1000 / median_rate(lambda: step(kind), 1, steps, warmup)

    return median_ms(op) - median_ms("reshape")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (the heap grows to its size)")
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv (torch)")
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(2)
    ops = fused_ops(required=True)
    torch_ms = [None] * len(CASES)
    if args.peer:
        command = [args.peer, "-c", PEER_SCRIPT, json.dumps(CASES), str(args.steps), str(args.warmup)]
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        torch_ms = json.loads(output.stdout.strip().splitlines()[-1])
    print(machine_line(2))
    print("forward + backward, float32, 2 threads (ms; ratio = the other's time / the fused op's)")
    for (op, shape), peer in zip(CASES, torch_ms):
        fused = paddle_ms(op, shape, True, ops, args.steps, args.warmup)
        plain = paddle_ms(op, shape, False, ops, args.steps, args.warmup)
        line = f"  {op:<11} {str(list(shape)):<16} fused {fused:7.2f}   paddle {plain:7.2f} (ratio {plain / fused:5.2f})"
        if peer is not None:
            line += f"   torch {peer:7.2f} (ratio {peer / fused:5.2f})"
        print(line)


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
