"""The Linear layer every block uses (one place to swap in parallel or fused variants later)."""

from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .kernels import exporting


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """x [..., in] @ weight [in, out] + bias [out], the bias added inside the GEMM.

    On CPU, Paddle's broadcast bias add after the matmul costs as much as a tenth of the matmul
    itself (10 ms of 36 ms for [1600, 768] x [768, 3072]); `addmm` folds it into the GEMM. An
    exported graph keeps matmul + add, which Paddle Inference fuses into a oneDNN fc (see kernels).
    """
    if bias is None or x.ndim < 2 or exporting():
        return F.linear(x, weight, bias)
    flat = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return flat.reshape([*x.shape[:-1], flat.shape[-1]])


class Linear(nn.Linear):
    """nn.Linear (weight [in, out]) computed by `linear`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
