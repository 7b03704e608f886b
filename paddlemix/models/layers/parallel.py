"""Tensor (Megatron-style) parallelism, chosen in one place.

With `tensor_parallel_degree` > 1 every block pairs a column-parallel layer (q/k/v, the first MLP
projections: each rank computes its own heads / hidden units) with a row-parallel one (the
attention and MLP output projections: partial products summed across ranks), the text token
embedding is split over the vocabulary, and sub-LN LayerNorms that sit between the pair normalise
over the split hidden width with statistics summed across ranks. Checkpoints stay unsharded:
`split_state_dict` gives a rank its shard on load, `merge_state_dicts` rebuilds the full tensors
on save, by the layout the layers declare (`tensor_parallel_layout`).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn

from .embedding import TokenEmbedding
from .linear import Linear


class TensorParallelUnavailableError(RuntimeError):
    """Tensor parallelism was asked for where Paddle cannot provide it."""


def ensure_tensor_parallel_available(degree: int) -> None:
    """Fail at start-up, with the fix, when `degree` > 1 cannot run here."""
    if degree <= 1:
        return
    if not paddle.is_compiled_with_cuda():
        raise TensorParallelUnavailableError(
            f"--tensor_parallel_degree {degree} needs GPUs: Paddle's tensor-parallel layers (fleet's "
            "ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding) run on CUDA only, and this "
            "Paddle build is CPU-only. Use --tensor_parallel_degree 1 (data parallel, optionally with "
            "--sharding), or install paddlepaddle-gpu on a GPU machine."
        )
    if model_parallel_group_size() != degree:
        raise TensorParallelUnavailableError(
            f"--tensor_parallel_degree {degree}: initialise fleet with mp_degree={degree} before building the "
            "model (python -m paddle.distributed.launch ... with the trainer does this)"
        )


def model_parallel_group_size() -> int:
    """Ranks in this process's tensor-parallel group (1 when fleet's hybrid parallelism is off)."""
    from paddle.distributed import fleet

    group = fleet.get_hybrid_communicate_group()
    return 1 if group is None else group.get_model_parallel_world_size()


def model_parallel_rank() -> int:
    from paddle.distributed import fleet

    group = fleet.get_hybrid_communicate_group()
    return 0 if group is None else group.get_model_parallel_rank()


def column_linear(in_features: int, out_features: int, bias: bool, degree: int) -> nn.Layer:
    """y[..., own out slice] = x @ W[:, slice]: output stays split (gather_output=False)."""
    if degree == 1:
        return Linear(in_features, out_features, bias_attr=None if bias else False)
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear

    return ColumnParallelLinear(in_features, out_features, has_bias=bias, gather_output=False)


def row_linear(in_features: int, out_features: int, degree: int) -> nn.Layer:
    """y = sum over ranks of x[..., own in slice] @ W[slice, :] + b: input split, output whole."""
    if degree == 1:
        return Linear(in_features, out_features)
    from paddle.distributed.fleet.meta_parallel import RowParallelLinear

    return RowParallelLinear(in_features, out_features, has_bias=True, input_is_parallel=True)


def vocab_embedding(vocab_size: int, width: int, degree: int) -> nn.Layer:
    if degree == 1:
        return TokenEmbedding(vocab_size, width)
    from paddle.distributed.fleet.meta_parallel import VocabParallelEmbedding

    return VocabParallelEmbedding(vocab_size, width)


class _AllReduceSum(paddle.autograd.PyLayer):
    """Sum across the group; the gradient is summed too, since every rank's slice uses the result."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad


class ParallelLayerNorm(nn.Layer):
    """LayerNorm over a hidden width split across `degree` ranks (this rank holds `local_width`).

    Mean and variance come from sums over every rank's slice, so the result equals a LayerNorm of
    the whole width; the affine weight and bias are split like the activations. The statistics and
    the normalisation of half-precision inputs run in float32 (the result has the input's dtype).
    """

    def __init__(self, local_width: int, degree: int, epsilon: float, group=None):
        super().__init__()
        self.full_width = local_width * degree
        self.epsilon = epsilon
        self.group = group
        self.weight = self.create_parameter([local_width], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([local_width], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        compute = "float32" if x.dtype in (paddle.float16, paddle.bfloat16) else x.dtype
        xc = x.astype(compute)
        sums = paddle.stack([xc.sum(axis=-1), (xc * xc).sum(axis=-1)])
        sums = _AllReduceSum.apply(sums, self.group)
        mean = (sums[0] / self.full_width).unsqueeze(-1)
        variance = (sums[1] / self.full_width).unsqueeze(-1) - mean * mean
        y = (xc - mean) * paddle.rsqrt(variance + self.epsilon) * self.weight.astype(compute)
        return (y + self.bias.astype(compute)).astype(x.dtype)


# How tensor parallelism splits a parameter (a layer declares its own, see tensor_parallel_layout):
#   column: Linear weight [in, out] split on out, its bias on out;   row: Linear weight split on in
#   qkv: the fused [in, 3 * width] weight (and [3 * width] bias): each rank takes its heads of q, k and v
#   vector: 1-D per-unit tensors of a split hidden width (q/v biases, sub-LN weight and bias)
#   vocab: the token embedding [vocab, width], split over the vocabulary
SPLIT_KINDS = ("column", "row", "qkv", "vector", "vocab")
Layout = Dict[str, str]


def tensor_parallel_layout(model: nn.Layer) -> Layout:
    """{parameter name: split kind} of every split parameter of `model`. Each layer that splits
    declares it in `TENSOR_PARALLEL_SPLIT` ({its own parameter name: kind}); whatever no layer
    declares is replicated. The layout does not depend on the degree the model was built with."""
    parameters = dict(model.named_parameters())
    layout = {}
    for prefix, layer in model.named_sublayers(include_self=True):
        for local, kind in getattr(layer, "TENSOR_PARALLEL_SPLIT", {}).items():
            name = f"{prefix}.{local}" if prefix else local
            if name in parameters:
                layout[name] = kind
    return layout


def _split_axis(kind: str, ndim: int) -> int:
    if kind == "column":
        return ndim - 1  # weight [in, out] on out; bias [out]
    return 0  # row weight on in; vector; vocab


def split_tensor(key: str, kind: Optional[str], value: np.ndarray, degree: int, rank: int) -> np.ndarray:
    """This rank's shard of tensor `key` split as `kind` (None: replicated, the whole tensor)."""
    if kind is None:
        return value
    if kind == "qkv":
        fused = value.reshape(*value.shape[:-1], 3, -1)  # [..., (q|k|v), width]
        return np.split(fused, degree, axis=-1)[rank].reshape(*value.shape[:-1], -1)
    axis = _split_axis(kind, value.ndim)
    if value.shape[axis] % degree:
        raise ValueError(f"{key}: dimension {value.shape[axis]} does not split {degree} ways")
    return np.split(value, degree, axis=axis)[rank]


def merge_tensor(kind: Optional[str], shards: Sequence[np.ndarray]) -> np.ndarray:
    if kind is None:
        return shards[0]
    if kind == "qkv":
        fused = [s.reshape(*s.shape[:-1], 3, -1) for s in shards]
        merged = np.concatenate(fused, axis=-1)
        return merged.reshape(*merged.shape[:-2], -1)
    return np.concatenate(shards, axis=_split_axis(kind, shards[0].ndim))


def split_state_dict(state: Dict[str, np.ndarray], layout: Layout, degree: int, rank: int) -> Dict[str, np.ndarray]:
    """The shard of an unsharded state dict that tensor-parallel rank `rank` of `degree` holds, for a
    model of `layout` (tensor_parallel_layout)."""
    return {key: split_tensor(key, layout.get(key), value, degree, rank) for key, value in state.items()}


def merge_state_dicts(shards: List[Dict[str, np.ndarray]], layout: Layout) -> Dict[str, np.ndarray]:
    """The unsharded state dict from every rank's shard, in rank order."""
    return {key: merge_tensor(layout.get(key), [shard[key] for shard in shards]) for key in shards[0]}


def gather_unsharded_state_dict(state: Dict[str, paddle.Tensor], layout: Layout) -> Dict[str, np.ndarray]:
    """Every rank's shard of each split tensor, all-gathered in the tensor-parallel group and merged."""
    from paddle.distributed import fleet

    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    merged = {}
    for key, value in state.items():
        if key not in layout:
            merged[key] = value.numpy()
            continue
        shards: List[paddle.Tensor] = []
        dist.all_gather(shards, value, group=group)
        merged[key] = merge_tensor(layout[key], [shard.numpy() for shard in shards])
    return merged
