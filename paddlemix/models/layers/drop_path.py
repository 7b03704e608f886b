"""Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples in training."""

import paddle
import paddle.nn as nn


class DropPath(nn.Layer):
    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), keep, dtype=x.dtype))
        return x * mask / keep


def drop_path_rates(max_rate: float, depth: int):
    """Per-block rates rising linearly from 0 to `max_rate` (EVA / timm's stochastic depth rule)."""
    if depth == 1:
        return [max_rate]
    return [max_rate * i / (depth - 1) for i in range(depth)]
