"""Reusable building blocks: attention, MLP, the transformer block and its stack."""

from .attention import Attention, CrossAttention, KVCache, causal_mask, scaled_dot_product_attention
from .pooling import AttentionalPooler, AttentionPoolLatent
from .mlp import Mlp, SwiGLU
from .rope import apply_rope, rope_rotations, rope_sin_cos
from .transformer import BlockOptions, CrossAttentionBlock, LayerScale, ResidualAttentionBlock, Transformer, run_block

__all__ = [
    "Attention",
    "AttentionalPooler",
    "AttentionPoolLatent",
    "BlockOptions",
    "CrossAttention",
    "CrossAttentionBlock",
    "KVCache",
    "LayerScale",
    "Mlp",
    "ResidualAttentionBlock",
    "SwiGLU",
    "Transformer",
    "apply_rope",
    "causal_mask",
    "rope_rotations",
    "rope_sin_cos",
    "run_block",
    "scaled_dot_product_attention",
]
