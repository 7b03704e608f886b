"""Transformer feed-forward blocks and their activations."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...external_ops import fused_bias_gelu, fused_ops
from ...utils.log import warn_once
from .kernels import exporting
from .linear import linear
from .norm import layer_norm
from .parallel import column_linear, row_linear


class QuickGELU(nn.Layer):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * F.sigmoid(1.702 * x)


def activation_layer(quick_gelu: bool) -> nn.Layer:
    """QuickGELU for OpenAI-trained weights, else exact (erf) GELU as in open_clip."""
    return QuickGELU() if quick_gelu else nn.GELU()


class Mlp(nn.Layer):
    """c_fc -> activation -> [ffn_ln] -> c_proj (names as in open_clip; ffn_ln is EVA's sub-LN).

    With tensor parallelism c_fc is column- and c_proj row-parallel. With `fused_bias_gelu` (and the
    op built here; else one warning) c_fc's bias and the activation run in paddlemix's
    fused_bias_gelu op after a bias-free GEMM; same parameters, same result. Inputs the op cannot
    take (see external_ops) and exported graphs use the plain path.
    """

    # hidden units split over tensor-parallel ranks: c_fc by output, c_proj by input
    TENSOR_PARALLEL_SPLIT = {"c_fc.weight": "column", "c_fc.bias": "column", "ffn_ln.weight": "vector",
                             "ffn_ln.bias": "vector", "c_proj.weight": "row"}

    def __init__(
        self,
        width: int,
        hidden: int,
        quick_gelu: bool = False,
        subln: bool = False,
        norm_eps: float = 1e-5,
        tensor_parallel_degree: int = 1,
        fused_bias_gelu: bool = False,
        fused_ln: bool = False,
    ):
        super().__init__()
        self.c_fc = column_linear(width, hidden, True, tensor_parallel_degree)
        self.act = activation_layer(quick_gelu)
        self.quick_gelu = quick_gelu
        if fused_bias_gelu and tensor_parallel_degree > 1:
            warn_once("fused_bias_gelu is not used with tensor parallelism: the parallel c_fc adds its own bias")
        self.fused_bias_gelu = fused_bias_gelu and tensor_parallel_degree == 1 and fused_ops() is not None
        self.ffn_ln = layer_norm(hidden, norm_eps, fused_ln, tensor_parallel_degree) if subln else nn.Identity()
        self.c_proj = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.c_proj(self.ffn_ln(self.activated_hidden(x)))

    def activated_hidden(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.fused_bias_gelu and not exporting():
            hidden = fused_bias_gelu(linear(x, self.c_fc.weight), self.c_fc.bias, self.quick_gelu)
            if hidden is not None:
                return hidden
            warn_once(f"fused_bias_gelu cannot take {x.dtype} tensors on {x.place}; using Paddle's ops for them")
        return self.act(self.c_fc(x))


class SwiGLU(nn.Layer):
    """w3([ffn_ln](silu(w1 x) * w2 x)) (Shazeer 2020), named as in EVA-CLIP; w1, w2 column-, w3 row-parallel."""

    TENSOR_PARALLEL_SPLIT = {"w1.weight": "column", "w1.bias": "column", "w2.weight": "column", "w2.bias": "column",
                             "ffn_ln.weight": "vector", "ffn_ln.bias": "vector", "w3.weight": "row"}

    def __init__(
        self,
        width: int,
        hidden: int,
        subln: bool = False,
        norm_eps: float = 1e-5,
        tensor_parallel_degree: int = 1,
        fused_ln: bool = False,
    ):
        super().__init__()
        self.w1 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.w2 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.ffn_ln = layer_norm(hidden, norm_eps, fused_ln, tensor_parallel_degree) if subln else nn.Identity()
        self.w3 = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))
