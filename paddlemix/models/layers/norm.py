"""LayerNorm, computed by paddlemix's fused_ln op (paddlemix.external_ops) where a config asks for
it (`fusedLN`) and the op can run, else by Paddle."""

import paddle
import paddle.nn as nn

from ...external_ops import fused_layer_norm, fused_ops
from ...utils.log import warn_once
from .kernels import exporting


class FusedLayerNorm(nn.LayerNorm):
    """A drop-in nn.LayerNorm (same parameters and state-dict keys) whose forward and backward run
    in the fused_ln op; inputs the op cannot take (GPU tensors in a CPU-only build, half precision)
    and exported graphs (which Paddle Inference must run without the op) use Paddle's layer norm."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not exporting():
            y = fused_layer_norm(x, self.weight, self.bias, self._epsilon)
            if y is not None:
                return y
            warn_once(f"fused_ln cannot take {x.dtype} tensors on {x.place}; using Paddle's layer norm for them")
        return super().forward(x)


def layer_norm(width: int, epsilon: float = 1e-5, fused: bool = False) -> nn.LayerNorm:
    """FusedLayerNorm when `fused` and the op could be built here (else one warning), else nn.LayerNorm."""
    if fused and fused_ops() is not None:
        return FusedLayerNorm(width, epsilon=epsilon)
    return nn.LayerNorm(width, epsilon=epsilon)
