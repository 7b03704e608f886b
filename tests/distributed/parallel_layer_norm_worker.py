"""One rank of the ParallelLayerNorm check: each of 2 ranks holds half of the hidden width.

Launched as `python -m paddle.distributed.launch --nproc_per_node 2 parallel_layer_norm_worker.py OUT`;
writes OUT/rank<r>.npz with this rank's output slice and the gradients of a fixed loss with respect
to its input slice, weight and bias. tests/test_tensor_parallel.py compares them with nn.LayerNorm.
"""

import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

from paddlemix.models.layers.parallel import ParallelLayerNorm
from paddlemix.utils.distributed import run_script

WIDTH, EPSILON, SEED = 12, 1e-6, 7


def inputs():
    """x [2, 3, WIDTH], weight and bias [WIDTH], loss weights [2, 3, WIDTH] (float64), fixed."""
    rng = np.random.default_rng(SEED)
    return (rng.standard_normal((2, 3, WIDTH)) * 3 + 1, rng.standard_normal(WIDTH), rng.standard_normal(WIDTH),
            rng.standard_normal((2, 3, WIDTH)))


def main(out_dir: str) -> None:
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    x, weight, bias, loss_weights = inputs()
    own = slice(rank * WIDTH // world, (rank + 1) * WIDTH // world)
    norm = ParallelLayerNorm(WIDTH // world, world, EPSILON).to(dtype="float64")
    norm.weight.set_value(paddle.to_tensor(weight[own]))
    norm.bias.set_value(paddle.to_tensor(bias[own]))
    x_local = paddle.to_tensor(x[..., own], stop_gradient=False)
    y = norm(x_local)
    # a loss that is the sum over ranks of each rank's share, as after a row-parallel all-reduce
    (y * paddle.to_tensor(loss_weights[..., own])).sum().backward()
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), y=y.numpy(), x_grad=x_local.grad.numpy(),
             weight_grad=norm.weight.grad.numpy(), bias_grad=norm.bias.grad.numpy())


if __name__ == "__main__":
    run_script(main, sys.argv[1])
