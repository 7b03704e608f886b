"""Multi-head attention, written once for every family: self-attention (with an optional key/value
cache for decoding) and cross-attention to a context, over one scaled-dot-product kernel."""

from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ...external_ops import fused_attention
from .kernels import custom_ops_allowed, exporting
from .linear import Linear, linear
from .norm import layer_norm
from .parallel import column_linear, row_linear
from .rope import apply_rope

ATTN_BIAS_CHOICES = ("qkv", "qv", "none")


def causal_mask(length: int, dtype) -> paddle.Tensor:
    """[length, length] additive mask: -inf above the diagonal (a token sees itself and earlier ones)."""
    return paddle.triu(paddle.full([length, length], float("-inf"), dtype=dtype), diagonal=1)


def scaled_dot_product_attention(
    query: paddle.Tensor,
    key: paddle.Tensor,
    value: paddle.Tensor,
    attn_mask: Optional[paddle.Tensor] = None,
    fused: bool = False,
) -> paddle.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v on [batch, tokens, heads, head_dim] tensors (Paddle's layout).

    `attn_mask` is additive (0 or -inf), broadcastable to [batch, heads, q_tokens, k_tokens].
    On CPU (float32, a mask the same for every head: none, [q_tokens, k_tokens], or one per batch
    row such as a text tower's causal + padding mask) paddlemix's cpu_attention op computes it in one
    pass, forward and backward (external_ops; 3x faster than the einsum path for ViT-B-32, and it keeps
    no probabilities for the backward). `fused` uses Paddle's fused kernel
    (flash attention) on a GPU in half precision. Elsewhere the einsum path below computes the same
    result. einsum keeps the token-major layout end to end: on CPU, materialising head-major
    transposes costs more than the attention itself (62 ms vs 15 ms per ViT-B/32 block at batch 32).
    """
    if fused and query.place.is_gpu_place() and query.dtype in (paddle.float16, paddle.bfloat16):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    if exporting():
        return _head_major_attention(query, key, value, attn_mask)
    scale = query.shape[-1] ** -0.5
    out = fused_attention(query, key, value, attn_mask, scale) if custom_ops_allowed() else None
    if out is not None:
        return out
    scores = paddle.einsum("bqhd,bkhd->bhqk", query * scale, key)
    if attn_mask is not None:
        scores = scores + attn_mask
    return paddle.einsum("bhqk,bkhd->bqhd", F.softmax(scores, axis=-1), value)


def _head_major_attention(query, key, value, attn_mask=None):
    """The same maths with head-major matmuls: the form Paddle Inference's oneDNN passes fuse."""
    query, key, value = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
    scores = paddle.matmul(query * query.shape[-1] ** -0.5, key, transpose_y=True)
    if attn_mask is not None:
        # expanded: Paddle Inference otherwise fuses the broadcast add into oneDNN's matmul as a
        # post-op that runs 80x slower (567 ms vs 7 ms per CLIP text block at batch 16)
        scores = scores + attn_mask.expand_as(scores)
    return paddle.matmul(F.softmax(scores, axis=-1), value).transpose([0, 2, 1, 3])


class Attention(nn.Layer):
    """Self-attention: one fused `qkv` projection ([width, 3 * width]), optional rope, `out_proj`.

    attn_bias: 'qkv' (a bias on each of q, k, v: CLIP), 'qv' (separate `q_bias` and `v_bias`, the
    key has none: EVA), or 'none'. subln: LayerNorm `inner_attn_ln` before `out_proj` (EVA-02).
    With tensor parallelism each rank computes heads / degree heads: `qkv` is column-parallel and
    `out_proj` row-parallel.
    """

    # heads split over tensor-parallel ranks: q/k/v and their biases by head, out_proj by its input
    TENSOR_PARALLEL_SPLIT = {"qkv.weight": "qkv", "qkv.bias": "qkv", "q_bias": "vector", "v_bias": "vector",
                             "inner_attn_ln.weight": "vector", "inner_attn_ln.bias": "vector",
                             "out_proj.weight": "row"}

    def __init__(
        self,
        width: int,
        heads: int,
        attn_bias: str = "qkv",
        subln: bool = False,
        norm_eps: float = 1e-5,
        xattn: bool = False,
        tensor_parallel_degree: int = 1,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by its {heads} heads")
        if attn_bias not in ATTN_BIAS_CHOICES:
            raise ValueError(f"attn_bias must be one of {ATTN_BIAS_CHOICES}, got {attn_bias!r}")
        self.local_heads = heads // tensor_parallel_degree
        self.local_width = width // tensor_parallel_degree
        self.xattn = xattn
        self.qkv = column_linear(width, 3 * width, attn_bias == "qkv", tensor_parallel_degree)
        if attn_bias == "qv":
            zeros = nn.initializer.Constant(0.0)
            self.q_bias = self.create_parameter([self.local_width], default_initializer=zeros)
            self.v_bias = self.create_parameter([self.local_width], default_initializer=zeros)
        else:
            self.q_bias = self.v_bias = None
        self.inner_attn_ln = layer_norm(width, norm_eps, tensor_parallel_degree) if subln else nn.Identity()
        self.out_proj = row_linear(width, width, tensor_parallel_degree)

    def forward(
        self,
        x: paddle.Tensor,
        attn_mask: Optional[paddle.Tensor] = None,
        rope: Optional[paddle.Tensor] = None,
        cache: Optional["KVCache"] = None,
    ) -> paddle.Tensor:
        """x: [batch, tokens, width] -> same. rope: per-token rotation matrices (see layers.rope).
        cache: keys and values of earlier tokens (incremental decoding); x's are appended to it."""
        batch, tokens = x.shape[:2]
        if self.q_bias is not None:
            bias = paddle.concat([self.q_bias, paddle.zeros_like(self.q_bias), self.v_bias])
            if isinstance(self.qkv, Linear):  # bias inside the GEMM; a parallel layer must run its own forward
                qkv = linear(x, self.qkv.weight, bias)
            else:
                qkv = self.qkv(x) + bias
        else:
            qkv = self.qkv(x)
        head_width = self.local_width // self.local_heads
        if exporting():  # split + reshape stay in oneDNN (bf16); reshape + unbind fall back to fp32 copies
            query, key, value = (t.reshape([batch, tokens, self.local_heads, head_width]) for t in qkv.split(3, axis=-1))
        else:
            query, key, value = qkv.reshape([batch, tokens, 3, self.local_heads, head_width]).unbind(2)
        if rope is not None:  # per token, channel pairs rotated (layers.rope)
            query, key = apply_rope(query, rope), apply_rope(key, rope)
        if cache is not None:
            key, value = cache.extend(key, value)
        out = scaled_dot_product_attention(query, key, value, attn_mask, fused=self.xattn)
        return self.out_proj(self.inner_attn_ln(out.reshape([batch, tokens, self.local_width])))


class KVCache:
    """Keys and values [batch, tokens, heads, head_dim] of the tokens a self-attention layer has seen,
    so that decoding one more token costs one token's projections (caption generation)."""

    def __init__(self):
        self.key: Optional[paddle.Tensor] = None
        self.value: Optional[paddle.Tensor] = None

    def extend(self, key: paddle.Tensor, value: paddle.Tensor):
        """Append the new tokens' key and value; return those of all tokens so far."""
        if self.key is not None:
            key, value = paddle.concat([self.key, key], axis=1), paddle.concat([self.value, value], axis=1)
        self.key, self.value = key, value
        return key, value

    def reorder(self, rows: paddle.Tensor) -> None:
        """Row i continues the sequence of old row rows[i] (beam search)."""
        if self.key is not None:
            self.key, self.value = self.key.gather(rows), self.value.gather(rows)


class CrossAttention(nn.Layer):
    """Attention of `width`-wide queries to a `context_width`-wide context (CoCa's decoder and
    attentional pooler): `q_proj` [width, width], `kv_proj` [context_width, 2 * width] (k|v), `out_proj`.

    As torch's nn.MultiheadAttention with kdim = vdim = context_width, each projection with a bias.
    """

    def __init__(self, width: int, heads: int, context_width: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by its {heads} heads")
        self.width, self.heads = width, heads
        self.q_proj = Linear(width, width)
        self.kv_proj = Linear(context_width, 2 * width)
        self.out_proj = Linear(width, width)

    def context_kv(self, context: paddle.Tensor):
        """context [batch, tokens, context_width] -> (key, value), each [batch, tokens, heads, head_dim];
        computed once per image when decoding token by token."""
        batch, tokens = context.shape[:2]
        kv = self.kv_proj(context)
        if exporting():  # as in Attention: split + reshape stay in oneDNN
            key, value = (t.reshape([batch, tokens, self.heads, self.width // self.heads]) for t in kv.split(2, axis=-1))
            return key, value
        # unbind, not two slices: on CPU each slice's backward costs ~18 ms (CoCa-B/32, batch 8), unbind's 0.6
        return tuple(kv.reshape([batch, tokens, 2, self.heads, self.width // self.heads]).unbind(2))

    def forward(self, x: paddle.Tensor, key: paddle.Tensor, value: paddle.Tensor) -> paddle.Tensor:
        """x [batch, queries, width], (key, value) from `context_kv` -> [batch, queries, width]."""
        batch, queries = x.shape[:2]
        query = self.q_proj(x).reshape([batch, queries, self.heads, self.width // self.heads])
        out = scaled_dot_product_attention(query, key, value)
        return self.out_proj(out.reshape([batch, queries, self.width]))
