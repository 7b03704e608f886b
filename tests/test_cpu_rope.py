"""The cpu_rope op (paddlemix.external_ops): EVA-02's rotary embedding from the 2x2 blocks of the
per-token rotation matrices, against the einsum of layers.rope in float32 and float64, forward and
gradient, shared and per-sample rotations; its bad-input errors; and `apply_rope`, which picks it."""

import numpy as np
import paddle
import pytest

from paddlemix.external_ops import cpu_threads, fused_ops
from paddlemix.models.layers import rope as rope_module
from paddlemix.models.layers.kernels import export_kernels, paddle_ops_only
from paddlemix.models.layers.rope import apply_rope, rope_rotations, rope_sin_cos
from op_calls import CallCounter


@pytest.fixture(scope="module")
def ops():
    return fused_ops(required=True)


def rotations_of(head_dim, grid, batch=None, seed=0):
    """rope_rotations of a grid (class token first), or `batch` random draws of their rows (as patch dropout keeps)."""
    rotations = rope_rotations(rope_sin_cos(head_dim, grid, 16, True))
    if batch is None:
        return rotations
    kept = np.random.default_rng(seed).integers(0, len(rotations), (batch, len(rotations) // 2))
    return rotations[kept]


def einsum_rope(x, rotations):
    if rotations.ndim == 3:
        return paddle.einsum("bnhd,nde->bnhe", x, rotations)
    return paddle.einsum("bnhd,bnde->bnhe", x, rotations)


def output_and_grad(fn, x_values, rotations, dy, dtype):
    x = paddle.to_tensor(x_values.astype(dtype), stop_gradient=False)
    y = fn(x, paddle.to_tensor(rotations.astype(dtype)))
    (y * paddle.to_tensor(dy.astype(dtype))).sum().backward()
    return y.numpy().astype(np.float64), x.grad.numpy().astype(np.float64)


@pytest.mark.parametrize("batch, heads, head_dim, grid, per_sample", [
    (1, 1, 4, (1, 1), False), (2, 3, 8, (3, 5), False), (8, 12, 64, (14, 14), False), (4, 12, 64, (14, 14), True),
], ids=["one_token", "3x5_grid", "eva02_b_16", "eva02_b_16_patch_dropout"])
def test_output_and_gradient_match_the_einsum(ops, batch, heads, head_dim, grid, per_sample):
    """Within 1e-6 (relative to each tensor's largest value) of the einsum in float32 and float64."""
    rotations = rotations_of(head_dim, grid, batch if per_sample else None)
    tokens = rotations.shape[-3]
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((batch, tokens, heads, head_dim)) * 3 for _ in range(2))
    ours = output_and_grad(lambda x, r: ops.cpu_rope(x, r, cpu_threads()), x, rotations, dy, "float32")
    paddles = output_and_grad(einsum_rope, x, rotations, dy, "float32")
    truth = output_and_grad(einsum_rope, x, rotations, dy, "float64")
    for name, mine, theirs, exact in zip(("y", "dx"), ours, paddles, truth):
        tolerance = 1e-6 * max(1.0, float(np.abs(exact).max()))
        assert np.abs(mine - exact).max() <= tolerance, name
        assert np.abs(mine - theirs).max() <= tolerance, name


@pytest.mark.parametrize("x_shape, rotations_shape, dtype, message", [
    ([2, 5, 3, 8], [4, 8, 8], "float32", r"rotations must be \[tokens, head_dim, head_dim\]"),
    ([2, 5, 3, 8], [3, 5, 8, 8], "float32", r"rotations must be"),
    ([2, 5, 3, 8], [5, 8, 4], "float32", r"rotations must be"),
    ([2, 5, 3, 7], [5, 7, 7], "float32", "head_dim must be even"),
    ([10, 3, 8], [5, 8, 8], "float32", r"x must be \[batch, tokens, heads, head_dim\]"),
    ([2, 5, 3, 8], [5, 8, 8], "float64", "float32 tensors only"),
], ids=["tokens", "batch", "not_square", "odd_head_dim", "rank", "dtype"])
def test_bad_input_is_a_clear_error(ops, x_shape, rotations_shape, dtype, message):
    with pytest.raises(Exception, match=message):
        ops.cpu_rope(paddle.ones(x_shape, dtype), paddle.ones(rotations_shape, dtype), 1)


def test_apply_rope_runs_the_op_on_unbind_views_and_the_einsum_where_the_op_may_not(ops, monkeypatch):
    """A query as the attention layer makes it (unbind of a packed qkv) goes to the op, with the einsum's
    gradient of the packed tensor; float64, rotations that need a gradient, paddle_ops_only (blocks under
    recompute) and export tracing take the einsum."""
    calls = CallCounter(monkeypatch, rope_module, "fused_rope").runs
    rotations = paddle.to_tensor(rotations_of(16, (3, 4)))
    packed = np.random.default_rng(0).standard_normal((2, 13, 3 * 4 * 16)).astype("float32")
    results = []
    for rope in (apply_rope, einsum_rope):
        qkv = paddle.to_tensor(packed, stop_gradient=False)
        query = qkv.reshape([2, 13, 3, 4, 16]).unbind(2)[0]
        out = rope(query, rotations)
        (out * out).sum().backward()
        results.append((out.numpy(), qkv.grad.numpy()))
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5)
    assert calls == [True]
    x = paddle.randn([2, 13, 4, 16])
    trainable = rotations.clone()
    trainable.stop_gradient = False
    apply_rope(x.astype("float64"), rotations.astype("float64"))
    apply_rope(x, trainable)
    with paddle_ops_only():
        apply_rope(x, rotations)
    with export_kernels():
        apply_rope(x, rotations)
    assert calls == [True, False, False]
