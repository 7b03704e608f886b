"""The one transformer block (with options) and the stack of blocks every tower uses.

CLIP's block is the default; EVA-CLIP's are the same block with rope, SwiGLU, sub-LN, q/v-only
biases, layer scale, post-norm or stochastic depth switched on.
"""

import functools
from dataclasses import dataclass
from typing import List, Optional

import paddle
import paddle.nn as nn
from paddle.distributed.fleet.utils import recompute

from .attention import Attention, CrossAttention, KVCache
from .drop_path import DropPath, drop_path_rates
from .kernels import paddle_ops_only
from .mlp import Mlp, SwiGLU
from .norm import layer_norm


@dataclass(frozen=True)
class BlockOptions:
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None  # layer scale initial value; None disables it
    activation: str = "gelu"  # the MLP's: 'gelu', 'quick_gelu' or 'gelu_tanh' (layers.linear)
    attn_bias: str = "qkv"  # see Attention
    subln: bool = False  # LayerNorm before the attention and MLP output projections
    swiglu: bool = False  # SwiGLU MLP instead of Linear-GELU-Linear
    postnorm: bool = False  # x + ln(f(x)) instead of x + f(ln(x))
    norm_eps: float = 1e-5
    xattn: bool = False
    tensor_parallel_degree: int = 1  # see layers.parallel


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
    """Pre-LN: x + attn(ln_1(x)), x + mlp(ln_2(x)); post-norm: x + ln_1(attn(x)), x + ln_2(mlp(x))."""

    def __init__(self, width: int, heads: int, options: BlockOptions = BlockOptions(), drop_path: float = 0.0):
        super().__init__()
        self.postnorm = options.postnorm
        self.ln_1 = layer_norm(width, options.norm_eps)
        degree = options.tensor_parallel_degree
        self.attn = Attention(width, heads, options.attn_bias, options.subln, options.norm_eps, options.xattn, degree)
        self.ln_2 = layer_norm(width, options.norm_eps)
        hidden = int(width * options.mlp_ratio)
        if hidden % degree or heads % degree:
            raise ValueError(
                f"tensor_parallel_degree {degree} must divide the {heads} attention heads and the {hidden} MLP units"
            )
        if options.swiglu:
            self.mlp = SwiGLU(width, hidden, options.subln, options.norm_eps, degree)
        else:
            self.mlp = Mlp(width, hidden, options.activation, options.subln, options.norm_eps, degree)
        with_scale = options.ls_init_value is not None
        self.ls_1 = LayerScale(width, options.ls_init_value) if with_scale else nn.Identity()
        self.ls_2 = LayerScale(width, options.ls_init_value) if with_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: paddle.Tensor,
        attn_mask: Optional[paddle.Tensor] = None,
        rope: Optional[paddle.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> paddle.Tensor:
        if self.postnorm:
            x = x + self.drop_path(self.ls_1(self.ln_1(self.attn(x, attn_mask, rope, cache))))
            return x + self.drop_path(self.ls_2(self.ln_2(self.mlp(x))))
        x = x + self.drop_path(self.ls_1(self.attn(self.ln_1(x), attn_mask, rope, cache)))
        return x + self.drop_path(self.ls_2(self.mlp(self.ln_2(x))))


class CrossAttentionBlock(nn.Layer):
    """x + attn(ln_1(x), ln_1_kv(context)), then x + mlp(ln_2(x)): open_clip's cross-attention
    residual block (CoCa's decoder)."""

    def __init__(self, width: int, heads: int, options: BlockOptions = BlockOptions()):
        super().__init__()
        self.ln_1 = layer_norm(width, options.norm_eps)
        self.ln_1_kv = layer_norm(width, options.norm_eps)
        self.attn = CrossAttention(width, heads, width)
        self.ln_2 = layer_norm(width, options.norm_eps)
        self.mlp = Mlp(width, int(width * options.mlp_ratio), options.activation, norm_eps=options.norm_eps)
        with_scale = options.ls_init_value is not None
        self.ls_1 = LayerScale(width, options.ls_init_value) if with_scale else nn.Identity()
        self.ls_2 = LayerScale(width, options.ls_init_value) if with_scale else nn.Identity()

    def context_kv(self, context: paddle.Tensor):
        """Keys and values of the context (computed once per image when decoding token by token)."""
        return self.attn.context_kv(self.ln_1_kv(context))

    def forward(self, x: paddle.Tensor, context: paddle.Tensor = None, context_kv=None) -> paddle.Tensor:
        key, value = self.context_kv(context) if context_kv is None else context_kv
        x = x + self.ls_1(self.attn(self.ln_1(x), key, value))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Layer):
    """`layers` blocks of one width; `recompute` trades compute for activation memory in training."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        options: BlockOptions = BlockOptions(),
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.recompute = False
        self.resblocks = nn.LayerList(
            [ResidualAttentionBlock(width, heads, options, rate) for rate in drop_path_rates(drop_path_rate, layers)]
        )

    def forward(
        self,
        x: paddle.Tensor,
        attn_mask: Optional[paddle.Tensor] = None,
        rope: Optional[paddle.Tensor] = None,
        caches: Optional[List[KVCache]] = None,
    ) -> paddle.Tensor:
        """x: [batch, tokens, width] -> same shape. caches: one KVCache per block (decoding)."""
        for index, block in enumerate(self.resblocks):
            x = run_block(self, block, x, attn_mask, rope, None if caches is None else caches[index])
        return x


def run_block(owner: nn.Layer, block: nn.Layer, *inputs):
    """block(*inputs), with its activations recomputed in backward when `owner.recompute` is set."""
    if owner.recompute and owner.training:
        # use_reentrant=False: the reentrant variant silently drops these blocks' gradients. Its
        # saved-tensor hooks do not reach custom ops' saved inputs: Paddle's ops run such blocks,
        # in the forward pass and in its recomputation alike.
        return recompute(functools.partial(_with_paddle_ops, block), *inputs, use_reentrant=False)
    return block(*inputs)


def _with_paddle_ops(block: nn.Layer, *inputs):
    with paddle_ops_only():
        return block(*inputs)
