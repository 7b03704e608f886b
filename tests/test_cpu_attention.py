"""The cpu_attention op (paddlemix.external_ops): softmax(scale q k^T + mask) v, forward and the three
gradients, against the einsum path in float64 and float32; masked and degenerate rows; bad input; and
scaled_dot_product_attention, which picks it."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix.external_ops import fused_ops
from paddlemix.models.layers import attention as attention_module
from paddlemix.models.layers.attention import causal_mask, scaled_dot_product_attention

# ((batch, queries, keys, heads, head_dim), mask): ViT-B-32, CLIP text, ViT-B-16, CoCa cross-attention to
# 256 and 50 image tokens, and small odd shapes (one query, head_dim 3, 40 and 24, a random mask)
CASES = [((2, 50, 50, 12, 64), "none"), ((2, 77, 77, 8, 64), "causal"), ((1, 197, 197, 12, 64), "none"),
         ((2, 76, 256, 8, 64), "none"), ((2, 76, 50, 8, 64), "none"), ((3, 1, 5, 2, 8), "none"),
         ((1, 7, 7, 1, 3), "none"), ((1, 7, 7, 1, 3), "causal"), ((2, 5, 5, 3, 16), "random"),
         ((2, 70, 70, 3, 16), "random"), ((2, 133, 133, 2, 40), "causal"), ((1, 130, 9, 2, 24), "random")]


@pytest.fixture(scope="module")
def ops():
    return fused_ops(required=True)


def einsum_attention(q, k, v, mask, scale):
    scores = paddle.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if mask is not None:
        scores = scores + mask
    return paddle.einsum("bhqk,bkhd->bqhd", F.softmax(scores, axis=-1), v)


def make_mask(kind, queries, keys, rng):
    if kind == "none":
        return None
    if kind == "causal":
        return np.triu(np.full((queries, keys), -np.inf, np.float32), 1)
    mask = rng.standard_normal((queries, keys)).astype(np.float32) * 3  # finite entries, and some -inf
    mask[rng.random((queries, keys)) < 0.2] = -np.inf
    mask[:, 0] = 0.0  # every query sees a key
    return mask


def output_and_grads(fn, arrays, mask, dtype, d_out):
    tensors = [paddle.to_tensor(a.astype(dtype), stop_gradient=False) for a in arrays]
    out = fn(*tensors, None if mask is None else paddle.to_tensor(mask.astype(dtype)))
    grads = paddle.grad([out], tensors, grad_outputs=[paddle.to_tensor(d_out.astype(dtype))])
    return [t.numpy().astype(np.float64) for t in [out, *grads]]


@pytest.mark.parametrize("shape, mask_kind", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_output_and_three_gradients_match_the_einsum_path(ops, shape, mask_kind):
    """Within 1e-5 of float64 (relative to each tensor's largest value), as the float32 einsum path is."""
    batch, queries, keys, heads, head_dim = shape
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, queries, heads, head_dim))
    k, v = (rng.standard_normal((batch, keys, heads, head_dim)) for _ in range(2))
    d_out = rng.standard_normal(q.shape)
    mask, scale = make_mask(mask_kind, queries, keys, rng), head_dim ** -0.5

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
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (4, 4)), "float32", 2, r"Mask must be \[4, 5\]"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 6, 2, 8), (0,)), "float32", 2, "cpu_attention"),
    (((1, 4, 2, 8), (1, 5, 2, 4), (1, 5, 2, 4), (0,)), "float32", 2, "cpu_attention"),
    (((4, 2, 8), (5, 2, 8), (5, 2, 8), (0,)), "float32", 2, "cpu_attention"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (0,)), "float64", 2, "float32"),
    (((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), (0,)), "float32", 0, "threads"),
], ids=["mask_shape", "kv_shapes", "head_dim", "rank", "dtype", "threads"])
def test_bad_input_is_a_clear_error(ops, shapes, dtype, threads, message):
    q, k, v, mask = (paddle.ones(shape, dtype if index < 3 else "float32") for index, shape in enumerate(shapes))
    with pytest.raises(Exception, match=message):
        ops.cpu_attention(q, k, v, mask, 0.5, threads)


def test_the_layer_runs_the_op_on_unbind_views_and_the_einsum_path_where_the_op_cannot(ops, monkeypatch):
    """q, k, v as the attention layer makes them (unbind of a packed qkv) go to the op, whose gradient
    of the packed tensor is the einsum path's; a per-batch [b, 1, q, k] mask and float64 take the einsum path."""
    calls = []
    original = attention_module.fused_attention

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

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
    monkeypatch.setattr(attention_module, "fused_attention", counted)
    q = paddle.randn([batch, tokens, heads, head_dim])
    scaled_dot_product_attention(q, q, q, causal_mask(tokens, "float32"))
    scaled_dot_product_attention(q, q, q, causal_mask(tokens, "float32").expand([batch, 1, tokens, tokens]))
    scaled_dot_product_attention(q.astype("float64"), q.astype("float64"), q.astype("float64"))
    assert calls == [True, False, False]
