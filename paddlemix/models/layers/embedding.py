"""The token-embedding table of the text towers."""

import paddle
import paddle.nn as nn

from ...external_ops import fused_embedding
from .kernels import custom_ops_allowed


class TokenEmbedding(nn.Embedding):
    """nn.Embedding (same parameter and state-dict key) whose lookup and dense gradient run in the
    token_embedding op where it can (float32 on CPU: its gradient of a [49408, 512] table costs a few ms
    where Paddle's CPU kernel costs 380); elsewhere, and in exported graphs, Paddle's embedding."""

    def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
        if custom_ops_allowed() and self._padding_idx is None and not self._sparse:
            out = fused_embedding(ids, self.weight)
            if out is not None:
                return out
        return super().forward(ids)
