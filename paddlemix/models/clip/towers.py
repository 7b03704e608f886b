"""The two CLIP towers: an OpenAI-style ViT image encoder and a causal text transformer."""

import math
import re
from typing import Set, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..configuration import TextConfig, VisionConfig
from ..layers import (AttentionalPooler, AttentionPoolLatent, BlockOptions, Transformer, causal_mask, rope_rotations,
                      rope_sin_cos)
from ..layers.norm import layer_norm
from ..layers.parameter_roles import lock_groups, vectors_and
from ..layers.parallel import vocab_embedding

Normal = nn.initializer.Normal


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def resample_positional_embedding(embedding: np.ndarray, tokens: int, prefix_tokens: int = 1) -> np.ndarray:
    """[prefix_tokens + g*g, width] class (if any) + square-grid position embedding -> [tokens, width], bicubic.

    As EVA-CLIP's `resize_evaclip_pos_embed` (bicubic, align_corners=False, no antialiasing), so a
    checkpoint trained at 224 pixels loads into a 336-pixel model. prefix_tokens: 1 with a class
    token, 0 without (SigLIP).
    """
    old_side, new_side = math.isqrt(embedding.shape[0] - prefix_tokens), math.isqrt(tokens - prefix_tokens)
    if old_side**2 + prefix_tokens != embedding.shape[0] or new_side**2 + prefix_tokens != tokens:
        raise ValueError(f"cannot resample a position embedding of {embedding.shape[0]} tokens to {tokens}: "
                         f"both must be {prefix_tokens} class token(s) plus a square grid")
    grid = paddle.to_tensor(embedding[prefix_tokens:].reshape(1, old_side, old_side, -1)).transpose([0, 3, 1, 2])
    grid = F.interpolate(grid, size=[new_side, new_side], mode="bicubic", align_corners=False)
    grid = grid.transpose([0, 2, 3, 1]).reshape([new_side * new_side, -1]).numpy()
    return np.concatenate([embedding[:prefix_tokens], grid], axis=0)


def drop_patches(tokens: paddle.Tensor, drop_fraction: float,
                 prefix_tokens: int = 1) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Keep a random subset of patch tokens per sample (FLIP, arXiv:2212.00794); the class token, if any, stays.

    tokens: [batch, prefix_tokens + patches, width] -> ([batch, prefix_tokens + kept, width], kept token
    indices [batch, prefix_tokens + kept]); prefix_tokens: 1 with a class token, 0 without.
    """
    batch, count = tokens.shape[0], tokens.shape[1] - prefix_tokens
    keep = max(1, int(count * (1.0 - drop_fraction)))
    kept_patches = paddle.argsort(paddle.rand([batch, count]), axis=-1)[:, :keep]
    kept_tokens = paddle.concat([paddle.zeros([batch, prefix_tokens], dtype=kept_patches.dtype),
                                 kept_patches + prefix_tokens], axis=1)
    return paddle.take_along_axis(tokens, kept_tokens.unsqueeze(-1), axis=1, broadcast=True), kept_tokens


def mlp_activation(section: str, gelu_approximate: str, quick_gelu: bool) -> str:
    """The MLP activation (layers.linear) of a tower with this gelu_approximate under the model's quick_gelu."""
    if quick_gelu and gelu_approximate != "none":
        raise ValueError(f"{section}.gelu_approximate applies to GELU, and this model's quick_gelu is set; unset one")
    return "quick_gelu" if quick_gelu else {"none": "gelu", "tanh": "gelu_tanh"}[gelu_approximate]


def vision_block_options(cfg: VisionConfig, quick_gelu: bool, tensor_parallel_degree: int) -> BlockOptions:
    return BlockOptions(
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
        activation=mlp_activation("vision_cfg", cfg.gelu_approximate, quick_gelu),
        attn_bias=cfg.attn_bias,
        subln=cfg.subln,
        swiglu=cfg.naiveswiglu,
        postnorm=cfg.postnorm,
        norm_eps=cfg.norm_eps,
        xattn=cfg.xattn,
        tensor_parallel_degree=tensor_parallel_degree,
    )


class BlockStackTower(nn.Layer):
    """What the trainer asks of a tower built on `self.transformer` (layers.Transformer): its depth,
    each parameter's layer id (the stem is named by STEM_PREFIXES) and activation recomputation."""

    STEM_PREFIXES: Tuple[str, ...] = ()

    def set_recompute(self, enable: bool = True) -> None:
        """Recompute block activations in backward (activation memory ~ one block)."""
        self.transformer.recompute = enable

    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    def layer_id(self, name: str) -> int:
        """Depth of a tower-relative parameter name: 0 for the stem, i + 1 for block i, num_layers + 1
        after the blocks (final norm, pooling, projection)."""
        if name.startswith(self.STEM_PREFIXES):
            return 0
        block = re.match(r"transformer\.resblocks\.(\d+)\.", name)
        return int(block.group(1)) + 1 if block else self.num_layers + 1


def _check_vision_options(cfg: VisionConfig, output_dim: int) -> None:
    if cfg.pool_type not in ("tok", "avg", "map"):
        raise ValueError(f"vision_cfg.pool_type must be 'tok', 'avg' or 'map', got {cfg.pool_type!r}")
    if cfg.proj_type not in ("linear", "none"):
        raise ValueError(f"vision_cfg.proj_type must be 'linear' or 'none', got {cfg.proj_type!r}")
    if cfg.pool_type == "tok" and not cfg.class_token:
        raise ValueError("vision_cfg: pool_type 'tok' pools the class token, and class_token is false; "
                         "use pool_type 'avg' or 'map', or set class_token")
    if cfg.pool_type == "map" and (cfg.attentional_pool or cfg.final_ln_after_pool):
        raise ValueError("vision_cfg: pool_type 'map' (ln_post, then timm's attention-pool head) takes neither "
                         "attentional_pool nor final_ln_after_pool; unset them")
    pooled_width = output_dim if cfg.attentional_pool else cfg.width
    if cfg.proj_type == "none" and (pooled_width != output_dim or cfg.proj_bias):
        raise ValueError(f"vision_cfg.proj_type 'none': the pooled width {pooled_width} is the image embedding, so it "
                         f"must equal embed_dim {output_dim}, and proj_bias has no projection to follow")


class VisionTransformer(BlockStackTower):
    """Patchify + [class token] + positional embedding, [ln_pre], blocks, ln_post, pooling, [projection].

    OpenAI CLIP's ViT by default; EVA-01/EVA-02's towers through the VisionConfig options (rope,
    SwiGLU, sub-LN, q/v biases, post-norm, patch bias, projection bias); SigLIP's timm ViT with
    class_token false, pool_type 'map' and proj_type 'none'.
    """

    STEM_PREFIXES = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")

    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool = False, tensor_parallel_degree: int = 1):
        super().__init__()
        _check_vision_options(cfg, output_dim)
        self.image_size = _pair(cfg.image_size)
        patch = _pair(cfg.patch_size)
        self.grid_size = (self.image_size[0] // patch[0], self.image_size[1] // patch[1])
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.final_ln_after_pool
        self.patch_dropout = cfg.patch_dropout
        self.prefix_tokens = int(cfg.class_token)
        width = cfg.width
        scale = width**-0.5

        self.conv1 = nn.Conv2D(3, width, kernel_size=patch, stride=patch, bias_attr=None if cfg.patch_bias else False)
        if cfg.class_token:
            self.class_embedding = self.create_parameter([width], default_initializer=Normal(std=scale))
        else:
            self.class_embedding = None
        self.positional_embedding = self.create_parameter(
            [self.grid_size[0] * self.grid_size[1] + self.prefix_tokens, width], default_initializer=Normal(std=scale)
        )
        if cfg.rope:
            sin_cos = rope_sin_cos(cfg.head_width, self.grid_size, cfg.pt_hw_seq_len, cfg.intp_freq)
            self.register_buffer("rope", paddle.to_tensor(rope_rotations(sin_cos)), persistable=False)
        else:
            self.rope = None
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else layer_norm(width, cfg.norm_eps)
        self.transformer = Transformer(
            width, cfg.layers, cfg.heads, vision_block_options(cfg, quick_gelu, tensor_parallel_degree), cfg.drop_path_rate
        )
        pool_width = width
        if cfg.attentional_pool and cfg.final_ln_after_pool:
            raise ValueError("vision_cfg: final_ln_after_pool does not apply with attentional_pool (ln_post always "
                             "normalises the pooled queries, as in open_clip's CoCa); unset one of them")
        if cfg.attentional_pool:  # CoCa: the queries, not the tokens, are layer-normed, pooled and projected
            self.attn_pool = AttentionalPooler(output_dim, width, cfg.attn_pooler_heads, cfg.attn_pooler_queries)
            pool_width = output_dim
        elif cfg.pool_type == "map":  # SigLIP: the layer-normed tokens are pooled by timm's attention-pool head
            # its MLP runs GELU whatever quick_gelu says, as the heads of open_clip's timm trunks
            self.attn_pool = AttentionPoolLatent(width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps,
                                                 mlp_activation("vision_cfg", cfg.gelu_approximate, quick_gelu=False))
        else:
            self.attn_pool = None
        self.ln_post = layer_norm(pool_width, cfg.norm_eps)
        if cfg.proj_type == "linear":
            self.proj = self.create_parameter([pool_width, output_dim], default_initializer=Normal(std=scale))
        else:
            self.proj = None
        if cfg.proj_bias:
            self.proj_bias = self.create_parameter([output_dim], default_initializer=nn.initializer.Constant(0.0))
        else:
            self.proj_bias = None

    def no_weight_decay(self) -> Set[str]:
        return vectors_and(self, ("positional_embedding", "class_embedding"))

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's VisionTransformer.lock: everything frozen but the last `unlocked_layers` of the
        groups [stem], block 0, ..., [last block, attention pooler, ln_post], [projection] (no
        projection group with proj_type 'none'). (Its freeze_bn_stats has no BatchNorm to act on here.)"""
        blocks = list(self.transformer.resblocks)
        stem = [self.conv1, *([self.class_embedding] if self.class_embedding is not None else []),
                self.positional_embedding, self.ln_pre]
        head = [blocks[-1], *([self.attn_pool] if self.attn_pool is not None else []), self.ln_post]
        projection = [p for p in (self.proj, self.proj_bias) if p is not None]
        lock_groups([stem, *blocks[:-1], head, *([projection] if projection else [])], unlocked_layers)

    def forward(self, image: paddle.Tensor) -> paddle.Tensor:
        """image: [batch, 3, H, W] normalised float -> pooled features [batch, output_dim]."""
        return self.forward_with_tokens(image)[0]

    def forward_with_tokens(self, image: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """image -> (pooled features [batch, output_dim], the other output tokens after ln_post):
        with attentional pooling, the captioning queries [batch, queries - 1, output_dim]; otherwise
        the patch tokens [batch, patches, width]."""
        x = self.conv1(image).flatten(2).transpose([0, 2, 1])  # [batch, grid*grid, width]
        if self.class_embedding is not None:
            cls = self.class_embedding.astype(x.dtype).expand([x.shape[0], 1, x.shape[-1]])
            x = paddle.concat([cls, x], axis=1)
        x = x + self.positional_embedding.astype(x.dtype)
        rope = self.rope
        if self.training and self.patch_dropout > 0:
            x, kept_tokens = drop_patches(x, self.patch_dropout, self.prefix_tokens)
            if rope is not None:  # each sample keeps the rotations of its own kept tokens
                rope = paddle.gather(rope, kept_tokens.flatten()).reshape([*kept_tokens.shape, *rope.shape[1:]])
        x = self.transformer(self.ln_pre(x), rope=rope)
        prefix = self.prefix_tokens
        if self.pool_type == "map":  # timm: the final norm, then the head, on the patch tokens only
            tokens = self.ln_post(x)[:, prefix:]
            pooled = self.attn_pool(tokens)
        else:
            if self.attn_pool is not None:  # CoCa: the queries are pooled; query 0 is the contrastive embedding
                x, prefix = self.attn_pool(x), 1
            if self.final_ln_after_pool:
                pooled, tokens = self._pool(x, prefix)
                pooled = self.ln_post(pooled)
            else:
                pooled, tokens = self._pool(self.ln_post(x), prefix)
        if self.proj is not None:
            pooled = pooled @ self.proj
        return (pooled if self.proj_bias is None else pooled + self.proj_bias), tokens

    def _pool(self, x: paddle.Tensor, prefix: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """x [batch, prefix + tokens, width] -> (the first token, or the mean of the tokens after the
        prefix with pool_type 'avg'; the tokens after the prefix)."""
        tokens = x[:, prefix:]
        return (tokens.mean(axis=1) if self.pool_type == "avg" else x[:, 0]), tokens


class TextTransformer(BlockStackTower):
    """Token + positional embedding, causal pre-LN blocks, ln_final, EOT pooling, projection.

    SigLIP's is the same tower bidirectional (`no_causal_mask`: no mask at all, padding included, as
    open_clip's without use_pad_mask), pooling the last position, with a projection bias, LayerNorm
    epsilon 1e-6 and, in SigLIP 2, tanh-approximated GELU.

    With `embed_cls` (CoCa) a learned CLS token follows the text and its output is the embedding;
    keys are then masked where the token before them is padding, exactly as open_clip's CoCa
    weights were trained (its "legacy" CLS mask, which lags the padding by one position).
    """

    TENSOR_PARALLEL_SPLIT = {"token_embedding.weight": "vocab"}  # over the vocabulary
    STEM_PREFIXES = ("token_embedding.", "positional_embedding", "cls_emb")

    def __init__(self, cfg: TextConfig, output_dim: int, quick_gelu: bool = False, tensor_parallel_degree: int = 1):
        super().__init__()
        if cfg.pool_type not in ("argmax", "first", "last"):
            raise ValueError(f"text_cfg.pool_type must be 'argmax', 'first' or 'last', got {cfg.pool_type!r}")
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.pool_type = cfg.pool_type
        self.pad_id = cfg.pad_id
        width = cfg.width

        self.token_embedding = vocab_embedding(cfg.vocab_size, width, tensor_parallel_degree)
        if cfg.embed_cls:
            self.cls_emb = self.create_parameter([width], default_initializer=Normal(std=0.01))
        else:
            self.cls_emb = None
        self.positional_embedding = self.create_parameter(
            [cfg.context_length + int(cfg.embed_cls), width], default_initializer=Normal(std=0.01)
        )
        activation = mlp_activation("text_cfg", cfg.gelu_approximate, quick_gelu)
        self.no_causal_mask = cfg.no_causal_mask
        options = BlockOptions(
            cfg.mlp_ratio, cfg.ls_init_value, activation, norm_eps=cfg.norm_eps, xattn=cfg.xattn,
            tensor_parallel_degree=tensor_parallel_degree,
        )
        self.transformer = Transformer(width, cfg.layers, cfg.heads, options)
        self.ln_final = layer_norm(width, cfg.norm_eps)
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

    @property
    def pad_token_id(self) -> int:
        return self.pad_id

    def no_weight_decay(self) -> Set[str]:
        return vectors_and(self, ("positional_embedding", "cls_emb"))

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's lock_text_tower: everything frozen but the last `unlocked_layers` of the groups
        [embeddings], block 0, ..., [last block, ln_final], [projection]. LayerNorms are frozen with
        their group, as open_clip does (it refuses freeze_layer_norm=False)."""
        if not freeze_layer_norm:
            raise ValueError("--lock_text_freeze_layer_norm false: a 'clip' text tower freezes its LayerNorms with "
                             "their layers, as open_clip's does")
        blocks = list(self.transformer.resblocks)
        embeddings = [self.token_embedding, self.positional_embedding, *([self.cls_emb] if self.cls_emb is not None else [])]
        lock_groups([embeddings, *blocks[:-1], [blocks[-1], self.ln_final], [self.text_projection]], unlocked_layers)

    def key_padding_mask(self, input_ids: paddle.Tensor, dtype) -> paddle.Tensor:
        """[batch, 1, 1, length + 1] additive mask of the CLS-token layout: key j is masked (-inf) when
        token j - 1 is padding; key 0 never is (open_clip's mask for its CoCa weights)."""
        valid = paddle.concat([paddle.ones([input_ids.shape[0], 1], dtype="bool"), input_ids != self.pad_id], axis=1)
        mask = paddle.where(valid, paddle.zeros([], dtype), paddle.full([], float("-inf"), dtype))
        return mask.unsqueeze([1, 2])

    def _check_length(self, length: int) -> None:
        if length > self.context_length:
            raise ValueError(
                f"text of {length} tokens is longer than the model's context_length {self.context_length}; "
                "tokenize with context_length=model.context_length"
            )

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """input_ids: [batch, length] int64 (length <= context_length) -> [batch, output_dim]."""
        return self.forward_with_tokens(input_ids)[0]

    def forward_with_tokens(self, input_ids: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """input_ids -> (features [batch, output_dim], token states [batch, length, width]): with a CLS
        token, the states before ln_final (what CoCa's decoder reads), else after it."""
        length = input_ids.shape[1]
        self._check_length(length)
        x = self.token_embedding(input_ids)
        if self.cls_emb is None:
            mask = None if self.no_causal_mask else causal_mask(length, x.dtype)
            x = self.transformer(x + self.positional_embedding[:length], attn_mask=mask)
            x = self.ln_final(x)
            return self._project(self._pool(x, input_ids)), x
        cls = self.cls_emb.astype(x.dtype).expand([x.shape[0], 1, x.shape[-1]])
        x = paddle.concat([x, cls], axis=1) + self.positional_embedding[: length + 1]
        mask = self.key_padding_mask(input_ids, x.dtype)
        if not self.no_causal_mask:
            mask = causal_mask(length + 1, x.dtype) + mask
        x = self.transformer(x, attn_mask=mask)
        return self._project(self.ln_final(x[:, -1])), x[:, :-1]

    def _project(self, pooled: paddle.Tensor) -> paddle.Tensor:
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def _pool(self, x: paddle.Tensor, input_ids: paddle.Tensor) -> paddle.Tensor:
        if self.pool_type == "argmax":  # EOT has the highest id in the vocabulary
            pooled = paddle.take_along_axis(x, input_ids.argmax(axis=-1).reshape([-1, 1, 1]), axis=1, broadcast=True)
            pooled = pooled.squeeze(1)
        elif self.pool_type == "first":
            pooled = x[:, 0]
        else:
            pooled = x[:, -1]
        return pooled

    def token_states_step(self, input_ids: paddle.Tensor, start: int, caches, key_mask: paddle.Tensor):
        """Token states before ln_final (what CoCa's decoder reads) of positions start.. of
        `input_ids` [batch, length], the earlier positions' keys and values read from `caches` (one
        KVCache per block, extended here): incremental decoding. key_mask: [batch, 1, 1, length]
        additive mask of the keys (the CLS layout's padding mask, or zeros). The appended CLS token
        is left out: causal attention never lets a text token see it."""
        length = input_ids.shape[1]
        self._check_length(length)
        x = self.token_embedding(input_ids[:, start:]) + self.positional_embedding[start:length]
        mask = causal_mask(length, x.dtype)[start:] + key_mask
        return self.transformer(x, attn_mask=mask, caches=caches)
