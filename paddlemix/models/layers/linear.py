"""The Linear every block uses, with its activation as an epilogue: one place for the fast paths.

`linear(x, weight, bias, activation)` computes act(x @ weight + bias) (act: None, "gelu", "quick_gelu"
or "gelu_tanh") by, in order of preference (an activation the ops have no epilogue for, "gelu_tanh",
follows the Linear as its own op):
- paddlemix's onednn_linear op (float32 on CPU; external_ops): the GEMMs in oneDNN's matmul
  primitive with the bias and the activation fused, forward and backward;
- on a GPU, Paddle's matmul and the fused_bias_gelu op for bias + activation;
- Paddle's ops: addmm (the bias inside the GEMM: on CPU Paddle's broadcast add after a matmul costs as
  much as a tenth of the matmul) and the activation.
An exported graph keeps matmul + add + activation, which Paddle Inference fuses into a oneDNN fc
(see kernels).
"""

from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...external_ops import ACTIVATIONS, fused_bias_gelu, fused_linear
from .kernels import bf16_gemms, custom_ops_allowed, exporting


def quick_gelu(x: paddle.Tensor) -> paddle.Tensor:
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""
    return x * F.sigmoid(1.702 * x)


def gelu_tanh(x: paddle.Tensor) -> paddle.Tensor:
    """GELU in its tanh approximation (torch's GELU(approximate='tanh')): SigLIP 2's text tower."""
    return F.gelu(x, approximate=True)


# activation name -> function; the names of ACTIVATIONS also run as the fused ops' epilogues
ACTIVATION_FUNCTIONS = {None: lambda x: x, "gelu": F.gelu, "quick_gelu": quick_gelu, "gelu_tanh": gelu_tanh}


def activate(x: paddle.Tensor, activation: Optional[str]) -> paddle.Tensor:
    return ACTIVATION_FUNCTIONS[activation](x)


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None,
           activation: Optional[str] = None) -> paddle.Tensor:
    """act(x [..., in] @ weight [in, out] + bias [out]) by the fastest path that can run it (see above)."""
    if activation not in ACTIVATION_FUNCTIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_FUNCTIONS)}, got {activation!r}")
    if activation not in ACTIVATIONS:  # no epilogue for it: the Linear by the paths below, then the activation
        return activate(linear(x, weight, bias), activation)
    if exporting():
        return activate(F.linear(x, weight, bias), activation)
    if custom_ops_allowed():
        y = fused_linear(x, weight, bias, activation, bf16=bf16_gemms())
        if y is None and activation is not None and bias is not None and x.place.is_gpu_place():
            y = fused_bias_gelu(paddle.matmul(x, weight), bias, activation == "quick_gelu")
        if y is not None:
            return y
    if bias is None or x.ndim < 2:
        return activate(F.linear(x, weight, bias), activation)
    flat = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return activate(flat.reshape([*x.shape[:-1], flat.shape[-1]]), activation)


class Linear(nn.Linear):
    """nn.Linear (weight [in, out]) computed by `linear`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
