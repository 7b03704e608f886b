"""Reusable building blocks: attention, MLP, the transformer block and its stack."""

from .attention import Attention, scaled_dot_product_attention
from .mlp import Mlp, QuickGELU, activation_layer
from .transformer import LayerScale, ResidualAttentionBlock, Transformer

__all__ = [
    "Attention",
    "LayerScale",
    "Mlp",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "activation_layer",
    "scaled_dot_product_attention",
]
