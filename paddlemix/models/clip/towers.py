"""The two CLIP towers: an OpenAI-style ViT image encoder and a causal text transformer."""

import math
from typing import Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..configuration import TextConfig, VisionConfig
from ..layers import BlockOptions, Transformer, rope_rotations, rope_sin_cos
from ..layers.parallel import vocab_embedding

Normal = nn.initializer.Normal


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def resample_positional_embedding(embedding: np.ndarray, tokens: int) -> np.ndarray:
    """[1 + g*g, width] class + square-grid position embedding -> [tokens, width], bicubic.

    As EVA-CLIP's `resize_evaclip_pos_embed` (bicubic, align_corners=False, no antialiasing), so a
    checkpoint trained at 224 pixels loads into a 336-pixel model.
    """
    old_side, new_side = math.isqrt(embedding.shape[0] - 1), math.isqrt(tokens - 1)
    if old_side**2 + 1 != embedding.shape[0] or new_side**2 + 1 != tokens:
        raise ValueError(f"cannot resample a position embedding of {embedding.shape[0]} tokens to {tokens}: "
                         "both must be a class token plus a square grid")
    grid = paddle.to_tensor(embedding[1:].reshape(1, old_side, old_side, -1)).transpose([0, 3, 1, 2])
    grid = F.interpolate(grid, size=[new_side, new_side], mode="bicubic", align_corners=False)
    grid = grid.transpose([0, 2, 3, 1]).reshape([new_side * new_side, -1]).numpy()
    return np.concatenate([embedding[:1], grid], axis=0)


def drop_patches(tokens: paddle.Tensor, drop_fraction: float) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Keep a random subset of patch tokens per sample (FLIP, arXiv:2212.00794); the class token stays.

    tokens: [batch, 1 + patches, width] -> ([batch, 1 + kept, width], kept token indices [batch, 1 + kept]).
    """
    batch, count = tokens.shape[0], tokens.shape[1] - 1
    keep = max(1, int(count * (1.0 - drop_fraction)))
    kept_patches = paddle.argsort(paddle.rand([batch, count]), axis=-1)[:, :keep]
    kept_tokens = paddle.concat([paddle.zeros([batch, 1], dtype=kept_patches.dtype), kept_patches + 1], axis=1)
    return paddle.take_along_axis(tokens, kept_tokens.unsqueeze(-1), axis=1, broadcast=True), kept_tokens


def vision_block_options(cfg: VisionConfig, quick_gelu: bool, tensor_parallel_degree: int) -> BlockOptions:
    return BlockOptions(
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
        quick_gelu=quick_gelu,
        attn_bias=cfg.attn_bias,
        subln=cfg.subln,
        swiglu=cfg.naiveswiglu,
        postnorm=cfg.postnorm,
        norm_eps=cfg.norm_eps,
        xattn=cfg.xattn,
        tensor_parallel_degree=tensor_parallel_degree,
    )


class VisionTransformer(nn.Layer):
    """Patchify + class token + positional embedding, [ln_pre], blocks, ln_post, projection.

    OpenAI CLIP's ViT by default; EVA-01/EVA-02's towers through the VisionConfig options (rope,
    SwiGLU, sub-LN, q/v biases, post-norm, patch bias, projection bias).
    """

    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool = False, tensor_parallel_degree: int = 1):
        super().__init__()
        if cfg.pool_type not in ("tok", "avg"):
            raise ValueError(f"vision_cfg.pool_type must be 'tok' or 'avg', got {cfg.pool_type!r}")
        self.image_size = _pair(cfg.image_size)
        patch = _pair(cfg.patch_size)
        self.grid_size = (self.image_size[0] // patch[0], self.image_size[1] // patch[1])
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.final_ln_after_pool
        self.patch_dropout = cfg.patch_dropout
        width = cfg.width
        scale = width**-0.5

        self.conv1 = nn.Conv2D(3, width, kernel_size=patch, stride=patch, bias_attr=None if cfg.patch_bias else False)
        self.class_embedding = self.create_parameter([width], default_initializer=Normal(std=scale))
        self.positional_embedding = self.create_parameter(
            [self.grid_size[0] * self.grid_size[1] + 1, width], default_initializer=Normal(std=scale)
        )
        if cfg.rope:
            sin_cos = rope_sin_cos(cfg.head_width, self.grid_size, cfg.pt_hw_seq_len, cfg.intp_freq)
            self.register_buffer("rope", paddle.to_tensor(rope_rotations(sin_cos)), persistable=False)
        else:
            self.rope = None
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else nn.LayerNorm(width, epsilon=cfg.norm_eps)
        self.transformer = Transformer(
            width, cfg.layers, cfg.heads, vision_block_options(cfg, quick_gelu, tensor_parallel_degree), cfg.drop_path_rate
        )
        self.ln_post = nn.LayerNorm(width, epsilon=cfg.norm_eps)
        self.proj = self.create_parameter([width, output_dim], default_initializer=Normal(std=scale))
        if cfg.proj_bias:
            self.proj_bias = self.create_parameter([output_dim], default_initializer=nn.initializer.Constant(0.0))
        else:
            self.proj_bias = None

    def forward(self, image: paddle.Tensor) -> paddle.Tensor:
        """image: [batch, 3, H, W] normalised float -> pooled features [batch, output_dim]."""
        x = self.conv1(image).flatten(2).transpose([0, 2, 1])  # [batch, grid*grid, width]
        cls = self.class_embedding.astype(x.dtype).expand([x.shape[0], 1, x.shape[-1]])
        x = paddle.concat([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
        rope = self.rope
        if self.training and self.patch_dropout > 0:
            x, kept_tokens = drop_patches(x, self.patch_dropout)
            if rope is not None:  # each sample keeps the rotations of its own kept tokens
                rope = paddle.gather(rope, kept_tokens.flatten()).reshape([*kept_tokens.shape, *rope.shape[1:]])
        x = self.transformer(self.ln_pre(x), rope=rope)
        if self.final_ln_after_pool:
            pooled = self.ln_post(self._pool(x))
        else:
            pooled = self._pool(self.ln_post(x))
        pooled = pooled @ self.proj
        return pooled if self.proj_bias is None else pooled + self.proj_bias

    def _pool(self, x: paddle.Tensor) -> paddle.Tensor:
        return x[:, 1:].mean(axis=1) if self.pool_type == "avg" else x[:, 0]


class TextTransformer(nn.Layer):
    """Token + positional embedding, causal pre-LN blocks, ln_final, EOT pooling, projection."""

    def __init__(self, cfg: TextConfig, output_dim: int, quick_gelu: bool = False, tensor_parallel_degree: int = 1):
        super().__init__()
        if cfg.pool_type not in ("argmax", "first", "last"):
            raise ValueError(f"text_cfg.pool_type must be 'argmax', 'first' or 'last', got {cfg.pool_type!r}")
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.pool_type = cfg.pool_type
        width = cfg.width

        self.token_embedding = vocab_embedding(cfg.vocab_size, width, tensor_parallel_degree)
        self.positional_embedding = self.create_parameter(
            [cfg.context_length, width], default_initializer=Normal(std=0.01)
        )
        options = BlockOptions(
            cfg.mlp_ratio, cfg.ls_init_value, quick_gelu, xattn=cfg.xattn, tensor_parallel_degree=tensor_parallel_degree
        )
        self.transformer = Transformer(width, cfg.layers, cfg.heads, options)
        self.ln_final = nn.LayerNorm(width, epsilon=1e-5)
        if cfg.proj_bias:
            self.text_projection = nn.Linear(width, output_dim)
        else:
            self.text_projection = self.create_parameter([width, output_dim], default_initializer=Normal(std=width**-0.5))
        self._init_like_open_clip(width, cfg.layers)

    def _init_like_open_clip(self, width: int, layers: int) -> None:
        """open_clip's (GPT-2 style) init: residual projections scaled down by depth."""
        Normal(std=0.02)(self.token_embedding.weight)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            Normal(std=width**-0.5)(block.attn.qkv.weight)
            Normal(std=proj_std)(block.attn.out_proj.weight)
            Normal(std=(2 * width) ** -0.5)(block.mlp.c_fc.weight)
            Normal(std=proj_std)(block.mlp.c_proj.weight)
        if isinstance(self.text_projection, nn.Linear):
            Normal(std=width**-0.5)(self.text_projection.weight)

    def causal_mask(self, length: int, dtype) -> paddle.Tensor:
        """[length, length] additive mask: -inf above the diagonal."""
        return paddle.triu(paddle.full([length, length], float("-inf"), dtype=dtype), diagonal=1)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """input_ids: [batch, length] int64 (length <= context_length) -> [batch, output_dim]."""
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"text of {length} tokens is longer than the model's context_length {self.context_length}; "
                "tokenize with context_length=model.context_length"
            )
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.causal_mask(length, x.dtype))
        x = self.ln_final(x)
        if self.pool_type == "argmax":  # EOT has the highest id in the vocabulary
            pooled = paddle.take_along_axis(x, input_ids.argmax(axis=-1).reshape([-1, 1, 1]), axis=1, broadcast=True)
            pooled = pooled.squeeze(1)
        elif self.pool_type == "first":
            pooled = x[:, 0]
        else:
            pooled = x[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection
