"""Reusable building blocks: attention, MLP, the transformer block and its stack."""

from .attention import Attention, scaled_dot_product_attention
from .mlp import Mlp, QuickGELU, SwiGLU, activation_layer
from .rope import apply_rope, rope_rotations, rope_sin_cos
from .transformer import BlockOptions, LayerScale, ResidualAttentionBlock, Transformer

__all__ = [
    "Attention",
    "BlockOptions",
    "SwiGLU",
    "apply_rope",
    "rope_rotations",
    "rope_sin_cos",
    "LayerScale",
    "Mlp",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "activation_layer",
    "scaled_dot_product_attention",
]
