"""Transformer feed-forward blocks."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...external_ops import ACTIVATIONS, fused_mlp, fused_swiglu
from .kernels import bf16_gemms, custom_ops_allowed
from .linear import Linear, activate, linear
from .norm import layer_norm
from .parallel import column_linear, row_linear


class Mlp(nn.Layer):
    """c_fc -> activation -> [ffn_ln] -> c_proj (names as in open_clip; ffn_ln is EVA's sub-LN).

    The activation (layers.linear.ACTIVATION_FUNCTIONS) is exact (erf) GELU as in open_clip, QuickGELU
    for OpenAI-trained weights, or tanh-approximated GELU (SigLIP 2's text tower); the first two run as
    c_fc's epilogue (layers.linear). Without a sub-LN, on CPU in float32, the whole block is
    paddlemix's onednn_mlp op, which keeps c_fc's output but not its activation for the backward pass
    (recomputed there: 20 MB less per block for ViT-B-32 at batch 32). With tensor parallelism c_fc is
    column- and c_proj row-parallel, and the activation follows c_fc's own forward.
    """

    # hidden units split over tensor-parallel ranks: c_fc by output, c_proj by input
    TENSOR_PARALLEL_SPLIT = {"c_fc.weight": "column", "c_fc.bias": "column", "ffn_ln.weight": "vector",
                             "ffn_ln.bias": "vector", "c_proj.weight": "row"}

    def __init__(
        self,
        width: int,
        hidden: int,
        activation: str = "gelu",
        subln: bool = False,
        norm_eps: float = 1e-5,
        tensor_parallel_degree: int = 1,
    ):
        super().__init__()
        self.c_fc = column_linear(width, hidden, True, tensor_parallel_degree)
        self.activation = activation
        self.ffn_ln = layer_norm(hidden, norm_eps, tensor_parallel_degree) if subln else nn.Identity()
        self.c_proj = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if isinstance(self.ffn_ln, nn.Identity) and isinstance(self.c_fc, Linear) and isinstance(self.c_proj, Linear) \
                and self.activation in ACTIVATIONS and custom_ops_allowed():
            out = fused_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias, self.activation,
                            bf16=bf16_gemms())
            if out is not None:
                return out
        return self.c_proj(self.ffn_ln(self.activated_hidden(x)))

    def activated_hidden(self, x: paddle.Tensor) -> paddle.Tensor:
        if isinstance(self.c_fc, Linear):
            return linear(x, self.c_fc.weight, self.c_fc.bias, self.activation)
        return activate(self.c_fc(x), self.activation)  # a parallel layer runs its own forward


class SwiGLU(nn.Layer):
    """w3([ffn_ln](silu(w1 x) * w2 x)) (Shazeer 2020), named as in EVA-CLIP; w1, w2 column-, w3 row-parallel.

    On CPU in float32 the gated product is paddlemix's onednn_swiglu op: w1 and w2 stay separate
    parameters (checkpoint keys), their GEMMs run in oneDNN with silu and the product as epilogues, and
    the op keeps w1 x and w2 x but not the product for the backward pass. Paddle's silu and multiply
    cost EVA02-B-16 8 ms per block at batch 8 on 2 cores.
    """

    TENSOR_PARALLEL_SPLIT = {"w1.weight": "column", "w1.bias": "column", "w2.weight": "column", "w2.bias": "column",
                             "ffn_ln.weight": "vector", "ffn_ln.bias": "vector", "w3.weight": "row"}

    def __init__(
        self,
        width: int,
        hidden: int,
        subln: bool = False,
        norm_eps: float = 1e-5,
        tensor_parallel_degree: int = 1,
    ):
        super().__init__()
        self.w1 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.w2 = column_linear(width, hidden, True, tensor_parallel_degree)
        self.ffn_ln = layer_norm(hidden, norm_eps, tensor_parallel_degree) if subln else nn.Identity()
        self.w3 = row_linear(hidden, width, tensor_parallel_degree)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        hidden = None
        if isinstance(self.w1, Linear) and isinstance(self.w2, Linear) and custom_ops_allowed():
            hidden = fused_swiglu(x, self.w1.weight, self.w1.bias, self.w2.weight, self.w2.bias, bf16=bf16_gemms())
        if hidden is None:
            hidden = F.silu(self.w1(x)) * self.w2(x)
        return self.w3(self.ffn_ln(hidden))
