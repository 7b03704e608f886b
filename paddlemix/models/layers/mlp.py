"""Transformer feed-forward block and its activations."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .linear import Linear


class QuickGELU(nn.Layer):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * F.sigmoid(1.702 * x)


def activation_layer(quick_gelu: bool) -> nn.Layer:
    """QuickGELU for OpenAI-trained weights, else exact (erf) GELU as in open_clip."""
    return QuickGELU() if quick_gelu else nn.GELU()


class Mlp(nn.Layer):
    """Linear(width -> hidden) + activation + Linear(hidden -> width), named as in open_clip."""

    def __init__(self, width: int, hidden: int, quick_gelu: bool = False):
        super().__init__()
        self.c_fc = Linear(width, hidden)
        self.act = activation_layer(quick_gelu)
        self.c_proj = Linear(hidden, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))
