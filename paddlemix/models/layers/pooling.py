"""Attentional pooling: learned queries attending to a tower's tokens (CoCa's image tower)."""

import paddle
import paddle.nn as nn

from .attention import CrossAttention
from .norm import layer_norm


class AttentionalPooler(nn.Layer):
    """`queries` learned vectors of `width` attend to the layer-normed tokens: [batch, tokens,
    context_width] -> [batch, queries, width] (open_clip's AttentionalPooler)."""

    def __init__(self, width: int, context_width: int, heads: int = 8, queries: int = 256):
        super().__init__()
        self.query = self.create_parameter([queries, width], default_initializer=nn.initializer.Normal())
        self.attn = CrossAttention(width, heads, context_width)
        self.ln_q = layer_norm(width, 1e-5)
        self.ln_k = layer_norm(context_width, 1e-5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        key, value = self.attn.context_kv(self.ln_k(x))
        # expanded before ln_q (the same per-row result): a parameter-only ln_q(query) is constant-folded
        # by Paddle Inference into a tensor without memory, and the exported program fails to load
        query = self.ln_q(self.query.unsqueeze(0).expand([x.shape[0], *self.query.shape]))
        return self.attn(query, key, value)
