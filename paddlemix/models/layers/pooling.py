"""Attention pooling: learned queries attending to a tower's tokens (CoCa's image tower, SigLIP's 'map' head)."""

import paddle
import paddle.nn as nn

from .attention import CrossAttention
from .mlp import Mlp
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


class AttentionPoolLatent(nn.Layer):
    """timm's AttentionPoolLatent with one latent query (the 'map' head of SigLIP's ViT): the latent
    attends to the tokens (timm's q, kv and proj Linears are `attn`'s q_proj, kv_proj and out_proj),
    then a residual MLP on its layer-normed output. [batch, tokens, width] -> [batch, width].
    `activation`: the MLP's (layers.linear): exact GELU as timm's ViT heads, 'gelu_tanh' as transformers'
    SiglipMultiheadAttentionPoolingHead."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 activation: str = "gelu"):
        super().__init__()
        # [1, 1, width] as timm's, whose init (truncated normal, std width^-0.5) this follows untruncated
        self.latent = self.create_parameter([1, 1, width], default_initializer=nn.initializer.Normal(std=width**-0.5))
        self.attn = CrossAttention(width, heads, width)
        self.norm = layer_norm(width, norm_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), activation)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        key, value = self.attn.context_kv(x)
        # expanded before q_proj, for the reason AttentionalPooler gives: no parameter-only subgraph
        query = self.latent.expand([x.shape[0], *self.latent.shape[1:]])
        pooled = self.attn(query, key, value)
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]
