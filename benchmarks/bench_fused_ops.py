"""Speed of paddlemix's fused_ln op (forward + backward) against Paddle's layer norm and torch's.

    python benchmarks/bench_fused_ops.py --peer ../reference/.venv/bin/python

float32, 2 threads each, the loss sum(y * dy) with gradients of x, weight and bias; the median of
`--steps` timed runs after one warm-up. torch runs in the peer interpreter afterwards.
"""

import argparse
import json
import subprocess
import sys
import textwrap

import paddle
import paddle.nn.functional as F

from paddlemix.external_ops import cpu_threads, fused_ops

from timing import median_rate

SHAPES = [(4, 197, 768), (8, 257, 1024), (32, 50, 768)]
PEER_SCRIPT = textwrap.dedent('''
    import json, statistics, sys, time
    import torch
    torch.set_num_threads(2)
    shapes, steps = json.loads(sys.argv[1]), int(sys.argv[2])
    results = []
    for shape in shapes:
        x = torch.randn(shape, requires_grad=True)
        w, b = torch.ones(shape[-1], requires_grad=True), torch.zeros(shape[-1], requires_grad=True)
        dy = torch.randn(shape)
        def step():
            y = torch.nn.functional.layer_norm(x, shape[-1:], w, b, 1e-5)
            (y * dy).sum().backward()
            x.grad = w.grad = b.grad = None
        times = []
        for index in range(steps + 1):
            start = time.perf_counter(); step()
            if index: times.append(time.perf_counter() - start)
        results.append(statistics.median(times) * 1000)
    print(json.dumps(results))
''')


def paddle_ms(shape, fused: bool, ops, steps: int) -> float:
    x = paddle.randn(shape)
    w, b = paddle.ones(shape[-1:]), paddle.zeros(shape[-1:])
    dy = paddle.randn(shape)
    for tensor in (x, w, b):
        tensor.stop_gradient = False

    def step():
        y = ops.fused_ln(x, w, b, 1e-5, cpu_threads())[0] if fused else F.layer_norm(x, shape[-1], w, b, 1e-5)
        (y * dy).sum().backward()
        for tensor in (x, w, b):
            tensor.clear_gradient()

    return 1000 / median_rate(step, 1, steps, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv (torch)")
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(2)
    ops = fused_ops(required=True)
    torch_ms = [None] * len(SHAPES)
    if args.peer:
        output = subprocess.run([args.peer, "-c", PEER_SCRIPT, json.dumps(SHAPES), str(args.steps)], check=True,
                                capture_output=True, text=True)
        torch_ms = json.loads(output.stdout.strip().splitlines()[-1])
    print("layer norm forward + backward, float32, 2 threads (ms; ratio = the other's time / fused_ln's)")
    for shape, peer in zip(SHAPES, torch_ms):
        fused, plain = paddle_ms(shape, True, ops, args.steps), paddle_ms(shape, False, ops, args.steps)
        line = f"  {str(list(shape)):<16} fused_ln {fused:7.2f}   paddle {plain:7.2f} (ratio {plain / fused:.2f})"
        if peer is not None:
            line += f"   torch {peer:7.2f} (ratio {peer / fused:.2f})"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
