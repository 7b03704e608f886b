"""The onednn_linear op (paddlemix.external_ops): act(x W + b) with its GEMMs in oneDNN, against
Paddle's own ops and float64 ground truth, forward and the three gradients, with and without the
activation epilogue; its bad-input errors; and `layers.linear`, which picks it. The onednn_mlp and
onednn_swiglu ops on the same GEMMs, against Paddle's ops in float32 and float64."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix.external_ops import ACTIVATIONS, cpu_threads, fused_linear, fused_ops
from paddlemix.models.layers.kernels import bf16_gemm_scope, export_kernels
from paddlemix.models.layers.linear import activate, linear
from paddlemix.models.layers.mlp import SwiGLU

# (x shape, out features): odd sizes, one row, a ViT-B/32 MLP at batch 4, a wide-in projection
SHAPES = [((1, 1), 1), ((7, 3), 5), ((2, 5, 33), 17), ((4, 50, 768), 3072), ((3, 2, 3072), 768)]


@pytest.fixture(scope="module")
def ops():
    return fused_ops(required=True)


def reference(x, weight, bias, activation):
    return activate(F.linear(x, weight, bias), activation)


def forward_and_grads(fn, values, dy, dtype):
    """y, dx, dweight, dbias (float64 numpy) of fn(x, weight, bias), loss sum(y * dy)."""
    tensors = [paddle.to_tensor(v.astype(dtype)) for v in values]
    for tensor in tensors:
        tensor.stop_gradient = False
    y = fn(*tensors)
    (y * paddle.to_tensor(dy.astype(dtype))).sum().backward()
    return [t.numpy().astype(np.float64) for t in [y] + [tensor.grad for tensor in tensors]]


def random_inputs(x_shape, out_features, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape) * 2
    weight = rng.standard_normal((x_shape[-1], out_features)) / np.sqrt(x_shape[-1])
    bias = rng.standard_normal(out_features)
    dy = rng.standard_normal((*x_shape[:-1], out_features))
    return (x, weight, bias), dy


@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
@pytest.mark.parametrize("x_shape, out_features", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_forward_and_three_gradients_match_paddle(ops, x_shape, out_features, activation):
    """Within 1e-5 (relative to each tensor's largest value) of Paddle's float32 ops and of float64."""
    values, dy = random_inputs(x_shape, out_features)
    code = ACTIVATIONS[activation]
    ours = forward_and_grads(lambda x, w, b: ops.onednn_linear(x, w, b, code, True, False, cpu_threads())[0],
                             values, dy, "float32")
    paddles = forward_and_grads(lambda x, w, b: reference(x, w, b, activation), values, dy, "float32")
    truth = forward_and_grads(lambda x, w, b: reference(x, w, b, activation), values, dy, "float64")
    for name, mine, theirs, exact in zip(("y", "dx", "dweight", "dbias"), ours, paddles, truth):
        tolerance = 1e-5 * max(1.0, float(np.abs(exact).max()))
        assert np.abs(mine - exact).max() <= tolerance, name
        assert np.abs(mine - theirs).max() <= tolerance, name


@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
def test_the_inference_epilogue_gives_what_the_training_path_gives(ops, activation):
    """Without gradients the activation is oneDNN's post-op and no pre-activation is kept."""
    (x, weight, bias), _ = random_inputs((4, 50, 768), 3072)
    x, weight, bias = (paddle.to_tensor(v.astype("float32")) for v in (x, weight, bias))
    code = ACTIVATIONS[activation]
    y_train, kept = ops.onednn_linear(x, weight, bias, code, True, False, 2)
    y_infer, dropped = ops.onednn_linear(x, weight, bias, code, False, False, 2)
    assert dropped.shape == [0] and kept.shape == ([0] if activation is None else y_train.shape)
    np.testing.assert_allclose(y_infer.numpy(), y_train.numpy(), rtol=0, atol=1e-5)


def test_one_thread_and_two_give_the_same_result(ops):
    (x, weight, bias), _ = random_inputs((8, 33, 96), 200)
    x, weight, bias = (paddle.to_tensor(v.astype("float32")) for v in (x, weight, bias))
    one, two = (ops.onednn_linear(x, weight, bias, 1, False, False, threads)[0].numpy() for threads in (1, 2))
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-5)


def test_empty_inputs_give_empty_outputs_and_zero_gradients(ops):
    x = paddle.zeros([0, 4])
    x.stop_gradient = False
    weight, bias = paddle.ones([4, 3]), paddle.ones([3])
    weight.stop_gradient = bias.stop_gradient = False
    y = ops.onednn_linear(x, weight, bias, 1, True, False, 2)[0]
    assert y.shape == [0, 3]
    y.sum().backward()
    assert float(weight.grad.abs().sum()) == 0 and float(bias.grad.abs().sum()) == 0


@pytest.mark.parametrize("x_shape, weight_shape, bias_shape, dtype, activation, message", [
    ([2, 8], [9, 4], [4], "float32", 0, r"weight must be \[8, out\]"),
    ([2, 8], [8], [8], "float32", 0, r"weight must be \[8, out\]"),
    ([2, 8], [8, 4], [5], "float32", 0, r"bias must be \[4\]"),
    ([2, 8], [8, 4], [4], "float64", 0, "float32 tensors only"),
    ([2, 8], [8, 4], [4], "float32", 3, "activation must be 0"),
])
def test_bad_input_is_a_clear_error(ops, x_shape, weight_shape, bias_shape, dtype, activation, message):
    x, weight, bias = (paddle.ones(shape, dtype) for shape in (x_shape, weight_shape, bias_shape))
    with pytest.raises(Exception, match=message):
        ops.onednn_linear(x, weight, bias, activation, False, False, 1)


def test_layers_linear_runs_the_op_without_a_bias_and_paddle_where_the_op_cannot(ops):
    """No bias: zeros go in (and get no gradient); float64 and export tracing take Paddle's ops."""
    (x, weight, _), _ = random_inputs((3, 5, 16), 8)
    x32, w32 = paddle.to_tensor(x.astype("float32")), paddle.to_tensor(weight.astype("float32"))
    assert fused_linear(x32, w32, None, "gelu") is not None
    np.testing.assert_allclose(linear(x32, w32, None, "gelu").numpy(), reference(x32, w32, None, "gelu").numpy(),
                               rtol=0, atol=1e-5)
    x64, w64 = paddle.to_tensor(x), paddle.to_tensor(weight)
    assert fused_linear(x64, w64, None) is None
    np.testing.assert_allclose(linear(x64, w64, None, "quick_gelu").numpy(),
                               reference(x64, w64, None, "quick_gelu").numpy(), rtol=1e-12)
    with export_kernels():
        np.testing.assert_array_equal(linear(x32, w32, None).numpy(), F.linear(x32, w32).numpy())
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(x32, w32, None, "relu")


def test_bf16_gemms_stay_within_bfloat16_rounding_of_float32(ops):
    """bf16_gemm_scope: products in bfloat16 where the CPU has bf16 instructions (float32 elsewhere):
    either way within bf16's rounding (8 bits of mantissa) of the float32 result, summed in float32."""
    (x, weight, bias), _ = random_inputs((4, 50, 768), 768)
    x, weight, bias = (paddle.to_tensor(v.astype("float32")) for v in (x, weight, bias))
    exact = linear(x, weight, bias).numpy()
    with bf16_gemm_scope():
        rounded = linear(x, weight, bias).numpy()
    scale = np.sqrt(768) * float(np.abs(x.numpy()).max()) * float(np.abs(weight.numpy()).max())
    assert np.abs(rounded - exact).max() <= 2 ** -7 * scale


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("x_shape, hidden", [((1, 3), 5), ((2, 5, 33), 17), ((4, 50, 768), 3072)],
                         ids=["1x3", "2x5x33", "vit_b_32"])
def test_mlp_op_and_its_five_gradients_match_two_linears(ops, x_shape, hidden, activation):
    """onednn_mlp keeps only c_fc's output and recomputes the activation: same results, within 1e-5."""
    rng = np.random.default_rng(0)
    width = x_shape[-1]
    values = [rng.standard_normal(x_shape) * 2, rng.standard_normal((width, hidden)) / np.sqrt(width),
              rng.standard_normal(hidden), rng.standard_normal((hidden, width)) / np.sqrt(hidden),
              rng.standard_normal(width)]
    dy = rng.standard_normal(x_shape)
    code = ACTIVATIONS[activation]

    def run(fn, dtype):
        tensors = [paddle.to_tensor(v.astype(dtype), stop_gradient=False) for v in values]
        y = fn(*tensors)
        (y * paddle.to_tensor(dy.astype(dtype))).sum().backward()
        return [t.numpy().astype(np.float64) for t in [y] + [tensor.grad for tensor in tensors]]

    ours = run(lambda x, w1, b1, w2, b2: ops.onednn_mlp(x, w1, b1, w2, b2, code, True, False, 2)[0], "float32")
    truth = run(lambda x, w1, b1, w2, b2: F.linear(activate(F.linear(x, w1, b1), activation), w2, b2), "float64")
    for name, mine, exact in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), ours, truth):
        assert np.abs(mine - exact).max() <= 1e-5 * max(1.0, float(np.abs(exact).max())), name
    x, w1, b1, w2, b2 = (paddle.to_tensor(v.astype("float32")) for v in values)
    inference, kept = ops.onednn_mlp(x, w1, b1, w2, b2, code, False, False, 2)
    assert kept.shape == [0]
    np.testing.assert_allclose(inference.numpy(), ours[0], rtol=0, atol=1e-5 * max(1.0, float(np.abs(ours[0]).max())))


def swiglu_reference(x, w1, b1, w2, b2):
    return F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2)


@pytest.mark.parametrize("x_shape, hidden", [((1, 3), 5), ((2, 5, 33), 17), ((2, 197, 768), 2048)],
                         ids=["1x3", "2x5x33", "eva02_b_16"])
def test_swiglu_op_and_its_five_gradients_match_paddle(ops, x_shape, hidden):
    """onednn_swiglu keeps both pre-activations and recomputes silu: within 1e-5 (relative to each
    tensor's largest value) of Paddle's float32 ops and of float64; its inference path (silu and the
    product as oneDNN post-ops) gives the same product and keeps nothing."""
    rng = np.random.default_rng(0)
    width = x_shape[-1]
    values = [rng.standard_normal(x_shape) * 2, rng.standard_normal((width, hidden)) / np.sqrt(width),
              rng.standard_normal(hidden), rng.standard_normal((width, hidden)) / np.sqrt(width),
              rng.standard_normal(hidden)]
    dh = rng.standard_normal((*x_shape[:-1], hidden))

    def run(fn, dtype):
        tensors = [paddle.to_tensor(v.astype(dtype), stop_gradient=False) for v in values]
        h = fn(*tensors)
        (h * paddle.to_tensor(dh.astype(dtype))).sum().backward()
        return [t.numpy().astype(np.float64) for t in [h] + [tensor.grad for tensor in tensors]]

    ours = run(lambda x, w1, b1, w2, b2: ops.onednn_swiglu(x, w1, b1, w2, b2, True, False, 2)[0], "float32")
    paddles = run(swiglu_reference, "float32")
    truth = run(swiglu_reference, "float64")
    for name, mine, theirs, exact in zip(("h", "dx", "dw1", "db1", "dw2", "db2"), ours, paddles, truth):
        tolerance = 1e-5 * max(1.0, float(np.abs(exact).max()))
        assert np.abs(mine - exact).max() <= tolerance, name
        assert np.abs(mine - theirs).max() <= tolerance, name
    x, w1, b1, w2, b2 = (paddle.to_tensor(v.astype("float32")) for v in values)
    inference, z1, z2 = ops.onednn_swiglu(x, w1, b1, w2, b2, False, False, 2)
    assert z1.shape == z2.shape == [0]
    np.testing.assert_allclose(inference.numpy(), ours[0], rtol=0, atol=1e-5 * max(1.0, float(np.abs(ours[0]).max())))


def test_swiglu_saturates_where_silu_does(ops):
    """silu(z) -> 0 for z -> -inf and -> z for z -> +inf, in the forward and the backward pass."""
    x = paddle.to_tensor(np.array([[-1e4, -100.0, 100.0, 1e4]], np.float32), stop_gradient=False)
    w, b = paddle.eye(4), paddle.zeros([4])
    inference = ops.onednn_swiglu(x, w, b, w, b, False, False, 1)[0]
    h = ops.onednn_swiglu(x, w, b, w, b, True, False, 1)[0]
    for result in (inference, h):
        np.testing.assert_allclose(result.numpy(), [[0, 0, 1e4, 1e8]], rtol=1e-6, atol=1e-30)
    h.backward(paddle.ones_like(h))
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0, 200, 2e4]], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("x_shape, w2_shape, b2_shape, dtype, message", [
    ([2, 8], [8, 5], [4], "float32", r"w2 and b2 must have w1's and b1's shapes \[8, 4\] and \[4\]"),
    ([2, 8], [8, 4], [5], "float32", r"w2 and b2 must have w1's and b1's shapes"),
    ([2, 8], [8, 4], [4], "float64", "float32 tensors only"),
    ([0, 8], [8, 4], [4], "float32", "empty tensors are not supported"),
], ids=["w2_shape", "b2_shape", "dtype", "empty"])
def test_swiglu_bad_input_is_a_clear_error(ops, x_shape, w2_shape, b2_shape, dtype, message):
    x, w1, b1 = paddle.ones(x_shape, dtype), paddle.ones([8, 4], dtype), paddle.zeros([4], dtype)
    w2, b2 = paddle.ones(w2_shape, dtype), paddle.zeros(b2_shape, dtype)
    with pytest.raises(Exception, match=message):
        ops.onednn_swiglu(x, w1, b1, w2, b2, True, False, 1)


def test_the_swiglu_layer_gives_paddles_result_with_the_op_and_without(ops, monkeypatch):
    """SwiGLU (with its sub-LN, as EVA02) through the op and with PPMIX_FUSED_OPS=0: the same output and
    gradients, within 1e-5 of each tensor's largest value."""
    paddle.seed(0)
    layer = SwiGLU(64, 96, subln=True)
    x_values = np.random.default_rng(0).standard_normal((2, 7, 64)).astype("float32")
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv("PPMIX_FUSED_OPS", switch)
        x = paddle.to_tensor(x_values, stop_gradient=False)
        out = layer(x)
        (out * out).sum().backward()
        results.append([out.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in layer.parameters()])
        layer.clear_gradients()
    for mine, reference in zip(*results):
        assert np.abs(mine - reference).max() <= 1e-5 * max(1.0, float(np.abs(reference).max()))
