"""The one pre-LN transformer block (with options) and the stack of blocks every tower uses."""

from typing import Optional

import paddle
import paddle.nn as nn
from paddle.distributed.fleet.utils import recompute

from .attention import Attention
from .mlp import Mlp


class LayerScale(nn.Layer):
    """Per-channel learnable scale of a residual branch (CaiT), initialised to `init_value`."""

    def __init__(self, width: int, init_value: float):
        super().__init__()
        self.gamma = self.create_parameter(
            [width], default_initializer=nn.initializer.Constant(init_value)
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Layer):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); optional layer scale on both branches."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        quick_gelu: bool = False,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, epsilon=1e-5)
        self.attn = Attention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, epsilon=1e-5)
        self.mlp = Mlp(width, int(width * mlp_ratio), quick_gelu)
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: paddle.Tensor, attn_mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Layer):
    """`layers` residual blocks of the same width; `recompute` trades compute for activation memory."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        quick_gelu: bool = False,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.recompute = False
        self.resblocks = nn.LayerList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, ls_init_value, quick_gelu) for _ in range(layers)]
        )

    def forward(self, x: paddle.Tensor, attn_mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """x: [batch, tokens, width] -> same shape."""
        for block in self.resblocks:
            if self.recompute and self.training:
                # use_reentrant=False: the reentrant variant silently drops these blocks' gradients
                x = recompute(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        return x
