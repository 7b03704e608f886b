"""Reusable building blocks: attention, MLP, the transformer block and its stack."""

from .attention import Attention, scaled_dot_product_attention
from .mlp import Mlp, QuickGELU, SwiGLU, activation_layer
from .rope import apply_rope, rope_rotations, rope_sin_cos
from .transformer import BlockOptions, LayerScale, ResidualAttentionBlock, Transformer

__all__ = [
    "Attention",
    "BlockOptions",
    "LayerScale",
    "Mlp",
    "QuickGELU",
    "ResidualAttentionBlock",
    "SwiGLU",
    "Transformer",
    "activation_layer",
    "apply_rope",
    "rope_rotations",
    "rope_sin_cos",
    "scaled_dot_product_attention",
]
