"""Transformer feed-forward blocks and their activations."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .parallel import column_linear, norm_layer, row_linear


class QuickGELU(nn.Layer):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * F.sigmoid(1.702 * x)


def activation_layer(quick_gelu: bool) -> nn.Layer:
    """QuickGELU for OpenAI-trained weights, else exact (erf) GELU as in open_clip."""
    return QuickGELU() if quick_gelu else nn.GELU()


class Mlp(nn.Layer):
    """c_fc -> activation -> [ffn_ln] -> c_proj (names as in open_clip; ffn_ln is EVA's sub-LN).

    With tensor parallelism c_fc is column- and c_proj row-parallel.
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        quick_gelu: bool = False,
        subln: bool = False,
        norm_eps: float = 1e-5,
        tensor_parallel_degree: int = 1,
    ):
        super().__init__()
        self.c_fc = column_linear(width, hidden, True, tensor_parallel_degree)
        self.act = activation_layer(quick_gelu)
        self.ffn_ln = norm_layer(hidden, norm_eps, tensor_parallel_degree) if subln else nn.Identity()
        self.c_proj = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.c_proj(self.ffn_ln(self.act(self.c_fc(x))))


class SwiGLU(nn.Layer):
    """w3([ffn_ln](silu(w1 x) * w2 x)) (Shazeer 2020), named as in EVA-CLIP; w1, w2 column-, w3 row-parallel."""

    def __init__(
        self, width: int, hidden: int, subln: bool = False, norm_eps: float = 1e-5, tensor_parallel_degree: int = 1
    ):
        super().__init__()
        self.w1 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.w2 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.ffn_ln = norm_layer(hidden, norm_eps, tensor_parallel_degree) if subln else nn.Identity()
        self.w3 = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))
