"""Every LayerNorm of every tower comes from `layer_norm` here: paddlemix's fused_ln op
(paddlemix.external_ops) wherever it is built and can take the input; else Paddle's, computed in
float32 for half-precision inputs (open_clip's LayerNormFp32: under AMP, float16 statistics lose
accuracy); or, for sub-LN norms inside a tensor-parallel pair, the cross-rank ParallelLayerNorm."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...external_ops import fused_layer_norm
from .kernels import custom_ops_allowed
from .parallel import ParallelLayerNorm

HALF_PRECISION = (paddle.float16, paddle.bfloat16)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state-dict keys) computed by the fused_ln op where it can run
    the input (float32 / float64 on CPU; on a GPU where Paddle has CUDA, half precision too), else by
    Paddle's layer norm, whose statistics, normalisation and affine run in float32 for float16 /
    bfloat16 inputs (the result has the input's dtype). Exported graphs use Paddle's."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if custom_ops_allowed() and self.weight is not None and self.bias is not None:
            y = fused_layer_norm(x, self.weight, self.bias, self._epsilon)
            if y is not None:
                return y
        if x.dtype not in HALF_PRECISION:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.astype("float32")
        bias = None if self.bias is None else self.bias.astype("float32")
        y = F.layer_norm(x.astype("float32"), self._normalized_shape, weight, bias, self._epsilon)
        return y.astype(x.dtype)


def layer_norm(width: int, epsilon: float = 1e-5, tensor_parallel_degree: int = 1) -> nn.Layer:
    """The LayerNorm of a `width`-wide activation.

    `tensor_parallel_degree` > 1: the activation is split that many ways (a sub-LN between a column-
    and a row-parallel layer), so ParallelLayerNorm sums its statistics across ranks (fused_ln, which
    sees one rank's slice only, is not used there). Otherwise LayerNorm.
    """
    if tensor_parallel_degree > 1:
        from paddle.distributed import fleet

        group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
        return ParallelLayerNorm(width // tensor_parallel_degree, tensor_parallel_degree, epsilon, group)
    return LayerNorm(width, epsilon=epsilon)
