"""CoCa's captioning decoder: per layer, causal self-attention over the text, then cross-attention
to the image tokens; a final LayerNorm and a projection to vocabulary logits (open_clip's
MultimodalTransformer)."""

from typing import List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from ..configuration import MultimodalConfig
from ..layers.norm import layer_norm
from ..layers import BlockOptions, CrossAttentionBlock, KVCache, ResidualAttentionBlock, causal_mask, run_block

Normal = nn.initializer.Normal


class MultimodalDecoder(nn.Layer):
    def __init__(self, cfg: MultimodalConfig, quick_gelu: bool = False):
        super().__init__()
        self.context_length = cfg.context_length
        self.width = cfg.width
        self.recompute = False
        options = BlockOptions(cfg.mlp_ratio, cfg.ls_init_value, "quick_gelu" if quick_gelu else "gelu")
        self.resblocks = nn.LayerList([ResidualAttentionBlock(cfg.width, cfg.heads, options) for _ in range(cfg.layers)])
        self.cross_attn = nn.LayerList([CrossAttentionBlock(cfg.width, cfg.heads, options) for _ in range(cfg.layers)])
        self.ln_final = layer_norm(cfg.width, 1e-5)
        self.text_projection = self.create_parameter(
            [cfg.width, cfg.vocab_size], default_initializer=Normal(std=cfg.width**-0.5)
        )

    def forward(self, image_tokens: paddle.Tensor, text_states: paddle.Tensor) -> paddle.Tensor:
        """image_tokens [batch, queries, width], text_states [batch, length, width] -> logits
        [batch, length, vocab]: position i predicts token i + 1."""
        mask = causal_mask(text_states.shape[1], text_states.dtype)
        x = text_states
        for block, cross in zip(self.resblocks, self.cross_attn):
            x = run_block(self, block, x, mask)
            x = run_block(self, cross, x, image_tokens)
        return self.ln_final(x) @ self.text_projection

    def image_kv(self, image_tokens: paddle.Tensor) -> List[Tuple[paddle.Tensor, paddle.Tensor]]:
        """Every cross-attention layer's keys and values of the image tokens (once per image)."""
        return [cross.context_kv(image_tokens) for cross in self.cross_attn]

    def next_token_logits(
        self,
        text_states: paddle.Tensor,
        start: int,
        caches: Sequence[KVCache],
        image_kv: Sequence[Tuple[paddle.Tensor, paddle.Tensor]],
        images: Optional[int] = None,
    ) -> paddle.Tensor:
        """Logits [rows, vocab] after the last of the text states of positions start.. ([rows, new, width]),
        earlier positions read from `caches`. `images`: the rows are `images` groups of rows (beams)
        that share one image each; `image_kv` then holds one entry per image, and a group's queries
        attend to it together."""
        images = images or text_states.shape[0]
        rows, new = text_states.shape[:2]
        mask = causal_mask(start + new, text_states.dtype)[start:]
        x = text_states
        for block, cross, cache, kv in zip(self.resblocks, self.cross_attn, caches, image_kv):
            x = block(x, mask, None, cache)
            x = cross(x.reshape([images, -1, self.width]), context_kv=kv).reshape([rows, new, self.width])
        return self.ln_final(x[:, -1]) @ self.text_projection
