"""The cpu_attention op (paddlemix.external_ops): softmax(scale q k^T + mask) v, forward and the three
gradients, against the einsum path in float64 and float32, with masks shared by the batch rows or one per
row; masked and degenerate rows; bad input; and scaled_dot_product_attention, which picks it."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix.external_ops import fused_ops
from paddlemix.models.layers import attention as attention_module
from paddlemix.models.layers.attention import causal_mask, scaled_dot_product_attention
from op_calls import CallCounter

# ((batch, queries, keys, heads, head_dim), mask): ViT-B-32, CLIP text, ViT-B-16, CoCa cross-attention to
# 256 and 50 image tokens, and small odd shapes (one query, head_dim 3, 40 and 24, a random mask); masks
# per batch row ([batch, queries, keys]): CoCa's text tower (causal + each caption's padding, 77 tokens and
# the CLS token), key padding alone, rows that see no key, a random mask per row
CASES = [((2, 50, 50, 12, 64), "none"), ((2, 77, 77, 8, 64), "causal"), ((1, 197, 197, 12, 64), "none"),
         ((2, 76, 256, 8, 64), "none"), ((2, 76, 50, 8, 64), "none"), ((3, 1, 5, 2, 8), "none"),
         ((1, 7, 7, 1, 3), "none"), ((1, 7, 7, 1, 3), "causal"), ((2, 5, 5, 3, 16), "random"),
         ((2, 70, 70, 3, 16), "random"), ((2, 133, 133, 2, 40), "causal"), ((1, 130, 9, 2, 24), "random"),
         ((3, 78, 78, 8, 64), "causal_padding"), ((2, 9, 9, 2, 8), "causal_padding"),
         ((3, 20, 37, 2, 16), "padding"), ((3, 13, 21, 2, 24), "rows_see_no_key"),
         ((2, 70, 70, 3, 16), "random_per_row"), ((1, 6, 6, 1, 8), "causal_padding")]


@pytest.fixture(scope="module")
def ops():
    return fused_ops(required=True)


@pytest.fixture
def op_runs(ops, monkeypatch):
    """Whether the op ran it, per call of scaled_dot_product_attention's fused_attention."""
    return CallCounter(monkeypatch, attention_module, "fused_attention").runs


def einsum_attention(q, k, v, mask, scale):
    """The einsum path; a [batch, queries, keys] mask is one per batch row. A query that sees no key gets
    output 0 (the op's definition, where softmax gives NaN): its mask row is zeroed, its probabilities too."""
    scores = paddle.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if mask is None:
        return paddle.einsum("bhqk,bkhd->bqhd", F.softmax(scores, axis=-1), v)
    mask = mask.unsqueeze(-3) if mask.ndim == 3 else mask
    sees_a_key = (mask > float("-inf")).any(axis=-1, keepdim=True)
    probabilities = F.softmax(scores + paddle.where(sees_a_key, mask, paddle.zeros_like(mask)), axis=-1)
    return paddle.einsum("bhqk,bkhd->bqhd", probabilities * sees_a_key.astype(scores.dtype), v)


def make_mask(kind, batch, queries, keys, rng):
    """An additive float32 mask: [queries, keys] for every batch row, or (kinds with padding or
    per_row, rows_see_no_key) [batch, queries, keys], one per row."""
    if kind == "none":
        return None
    if kind == "causal":
        return np.triu(np.full((queries, keys), -np.inf, np.float32), 1)
    if kind in ("padding", "causal_padding"):  # keys past each caption's length; CoCa's CLS layout keeps key 0
        lengths = rng.integers(1, keys + 1, batch)
        lengths[0] = keys  # one caption fills the context
        mask = np.where(np.arange(keys) < lengths[:, None, None], 0, -np.inf).astype(np.float32)
        mask = np.broadcast_to(mask, (batch, queries, keys))
        return mask + np.triu(np.full((queries, keys), -np.inf, np.float32), 1) if kind == "causal_padding" else mask
    rows = (batch, queries) if kind in ("random_per_row", "rows_see_no_key") else (queries,)
    mask = rng.standard_normal((*rows, keys)).astype(np.float32) * 3  # finite entries, and some -inf
    mask[rng.random(mask.shape) < 0.2] = -np.inf
    mask[..., 0] = 0.0  # every query sees a key
    if kind == "rows_see_no_key":
        mask[0, 3] = mask[1, :5] = mask[2] = -np.inf  # one query, a block of queries, a whole batch row
    return mask


def output_and_grads(fn, arrays, mask, dtype, d_out):
    tensors = [paddle.to_tensor(a.astype(dtype), stop_gradient=False) for a in arrays]
    out = fn(*tensors, None if mask is None else paddle.to_tensor(mask.astype(dtype)))
    grads = paddle.grad([out], tensors, grad_outputs=[paddle.to_tensor(d_out.astype(dtype))])
    return [t.numpy().astype(np.float64) for t in [out, *grads]]


@pytest.mark.parametrize("shape, mask_kind", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_output_and_three_gradients_match_the_einsum_path(ops, shape, mask_kind):
    """Within 1e-5 of float64 (relative to each tensor's largest value), as the float32 einsum path is;
    with masks shared by the batch rows and masks per row, rows that see no key included."""
    batch, queries, keys, heads, head_dim = shape
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, queries, heads, head_dim))
    k, v = (rng.standard_normal((batch, keys, heads, head_dim)) for _ in range(2))
    d_out = rng.standard_normal(q.shape)
    mask, scale = make_mask(mask_kind, batch, queries, keys, rng), head_dim ** -0.5

    def op(q_, k_, v_, m_):
        return ops.cpu_attention(q_, k_, v_, paddle.empty([0]) if m_ is None else m_, scale, 2)[0]

    ours = output_and_grads(op, (q, k, v), mask, "float32", d_out)
    truth = output_and_grads(lambda *a: einsum_attention(*a, scale), (q, k, v), mask, "float64", d_out)
    for name, mine, exact in zip(("out", "dq", "dk", "dv"), ours, truth):
        assert np.abs(mine - exact).max() <= 1e-5 * np.abs(exact).max(), name


def test_a_query_that_sees_no_key_gets_zero_output_and_zero_gradients(ops):
    """Where the einsum formula gives NaN (softmax of a row of -inf), the op gives 0 and lse +inf."""
    mask = np.zeros((5, 5), np.float32)
    mask[2] = -np.inf
    q = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 5, 1, 8)).astype("float32"), stop_gradient=False)
    out, lse = ops.cpu_attention(q, q, q, paddle.to_tensor(mask), 0.3, 2)
    out.sum().backward()
    np.testing.assert_array_equal(out.numpy()[0, 2], 0)
    assert lse.numpy()[0, 0, 2] == np.inf and np.isfinite(q.grad.numpy()).all()


@pytest.mark.parametrize("shape", [(2, 3, 0, 2, 8), (2, 0, 3, 2, 8), (1, 9, 17, 3, 1)], ids=["no_keys", "no_queries", "head_dim_1"])
def test_degenerate_shapes_run_and_stay_finite(ops, shape):
    batch, queries, keys, heads, head_dim = shape
    rng = np.random.default_rng(1)
    q = paddle.to_tensor(rng.standard_normal((batch, queries, heads, head_dim)).astype("float32"), stop_gradient=False)
    k, v = (paddle.to_tensor(rng.standard_normal((batch, keys, heads, head_dim)).astype("float32"), stop_gradient=False)
            for _ in range(2))
    out, _ = ops.cpu_attention(q, k, v, paddle.empty([0]), 0.5, 2)
    out.sum().backward()
    assert out.shape == [batch, queries, heads, head_dim]
    assert all(np.isfinite(t.numpy()).all() for t in (out, q.grad, k.grad, v.grad))


@pytest.mark.parametrize("shapes, dtype, threads, message", [
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (4, 4)), "float32", 2,
     r"cpu_attention: Mask must be \[4, 5\] .* or \[1, 4, 5\] .*; got \[4, 4\]"),
    (((2, 4, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8), (3, 4, 5)), "float32", 2,
     r"cpu_attention: Mask must be \[4, 5\] .* or \[2, 4, 5\] \(\[batch, queries, keys\].*; got \[3, 4, 5\]"),
    (((2, 4, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8), (2, 1, 4, 5)), "float32", 2,
     r"cpu_attention: Mask must be .*; got \[2, 1, 4, 5\]"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 6, 2, 8), (0,)), "float32", 2, "cpu_attention"),
    (((1, 4, 2, 8), (1, 5, 2, 4), (1, 5, 2, 4), (0,)), "float32", 2, "cpu_attention"),
    (((4, 2, 8), (5, 2, 8), (5, 2, 8), (0,)), "float32", 2, "cpu_attention"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (0,)), "float64", 2, "float32"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (0,)), "float32", 0, "threads"),
], ids=["mask_shape", "mask_batch", "mask_rank", "kv_shapes", "head_dim", "rank", "dtype", "threads"])
def test_bad_input_is_a_clear_error(ops, shapes, dtype, threads, message):
    q, k, v, mask = (paddle.ones(shape, dtype if index < 3 else "float32") for index, shape in enumerate(shapes))
    with pytest.raises(Exception, match=message):
        ops.cpu_attention(q, k, v, mask, 0.5, threads)


def test_the_layer_runs_the_op_on_unbind_views(ops):
    """q, k, v as the attention layer makes them (unbind of a packed qkv) go to the op, whose gradient
    of the packed tensor is the einsum path's."""
    batch, tokens, heads, head_dim = 2, 50, 4, 64
    packed = np.random.default_rng(0).standard_normal((batch, tokens, 3 * heads * head_dim)).astype("float32")
    results = []
    for use_op in (True, False):
        qkv = paddle.to_tensor(packed, stop_gradient=False)
        q, k, v = qkv.reshape([batch, tokens, 3, heads, head_dim]).unbind(2)
        out = scaled_dot_product_attention(q, k, v) if use_op else einsum_attention(q, k, v, None, head_dim ** -0.5)
        (out * out).sum().backward()
        results.append((out.numpy(), qkv.grad.numpy()))
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-4)


# masks as scaled_dot_product_attention takes them (broadcastable to [batch, heads, queries, keys]), and
# whether the op runs them: those the same for every head do, those per head or needing a gradient do not
LAYER_MASKS = [("causal", [9, 9], True), ("causal_4d", [1, 1, 9, 9], True),
               ("causal_padding", [2, 1, 9, 9], True), ("key_padding", [2, 1, 1, 9], True),
               ("shared_key_padding", [1, 1, 1, 9], True), ("per_head", [2, 3, 9, 9], False),
               ("needs_a_gradient", [2, 1, 9, 9], False)]


@pytest.mark.parametrize("kind, shape, runs_the_op", LAYER_MASKS, ids=[case[0] for case in LAYER_MASKS])
def test_scaled_dot_product_attention_runs_masks_broadcast_over_heads_in_the_op(op_runs, kind, shape, runs_the_op):
    """The result and gradients are the einsum path's whichever path runs."""
    batch, tokens, heads, head_dim = 2, 9, 3, 8
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((batch, tokens, heads, head_dim)).astype("float32") for _ in range(3)]
    mask = np.where(rng.random(shape) < 0.3, -np.inf, 0).astype(np.float32)
    mask[..., 0] = 0  # every query sees a key
    if kind.startswith("causal"):
        mask = mask + np.triu(np.full((tokens, tokens), -np.inf, np.float32), 1)
    results = []
    for attention in (scaled_dot_product_attention, lambda *a: einsum_attention(*a, head_dim ** -0.5)):
        q, k, v = (paddle.to_tensor(a, stop_gradient=False) for a in arrays)
        out = attention(q, k, v, paddle.to_tensor(mask, stop_gradient=kind != "needs_a_gradient"))
        (out * out).sum().backward()
        results.append([t.numpy() for t in (out, q.grad, k.grad, v.grad)])
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5)
    assert op_runs == [runs_the_op]


def test_float64_takes_the_einsum_path(op_runs):
    q = paddle.randn([2, 5, 2, 8], "float64")
    scaled_dot_product_attention(q, q, q, causal_mask(5, "float64"))
    assert op_runs == [False]
