"""paddlemix.external_ops: the fused_ln op (built here, CPU) against Paddle's layer norm, its bad-input
errors, the fallback with one warning, a race-free build from two processes, and models with fusedLN."""

import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import paddlemix.external_ops as external_ops
from paddlemix import AutoConfig, AutoModel
from paddlemix.external_ops import cpu_threads, fused_ops
from paddlemix.models.layers.norm import FusedLayerNorm, layer_norm

SHAPES = [(1, 1), (7, 3), (5, 33), (3, 1, 17), (4, 197, 768), (2, 1025, 1408)]


@pytest.fixture(scope="module")
def ops():
    return fused_ops(required=True)


def layer_norm_and_grads(ops, x_values, weight, bias, dy, dtype, fused):
    """y, dx, dweight, dbias (float64 numpy) of layer norm over the last dimension, loss sum(y * dy)."""
    x, w, b = (paddle.to_tensor(v.astype(dtype)) for v in (x_values, weight, bias))
    for tensor in (x, w, b):
        tensor.stop_gradient = False
    if fused:
        y = ops.fused_ln(x, w, b, 1e-5, cpu_threads())[0]
    else:
        y = F.layer_norm(x, x_values.shape[-1], w, b, 1e-5)
    (y * paddle.to_tensor(dy.astype(dtype))).sum().backward()
    return [t.numpy().astype(np.float64) for t in (y, x.grad, w.grad, b.grad)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_three_gradients_match_paddle_layer_norm(ops, shape, dtype):
    """Within 1e-5 (relative to each tensor's largest value, for the gradients summed over rows) of
    Paddle's layer norm in the same dtype and of float64 ground truth."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    weight, bias = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    ours = layer_norm_and_grads(ops, x, weight, bias, dy, dtype, fused=True)
    paddles = layer_norm_and_grads(ops, x, weight, bias, dy, dtype, fused=False)
    truth = layer_norm_and_grads(ops, x, weight, bias, dy, "float64", fused=False)
    for name, mine, theirs, exact in zip(("y", "dx", "dweight", "dbias"), ours, paddles, truth):
        tolerance = 1e-5 * max(1.0, float(np.abs(exact).max()))
        assert np.abs(mine - theirs).max() <= tolerance, name
        assert np.abs(mine - exact).max() <= tolerance, name


def test_statistics_are_float32_row_mean_and_inverse_std(ops):
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, 10)))
    y, mean, invvar = ops.fused_ln(x, paddle.ones([10], "float64"), paddle.zeros([10], "float64"), 1e-5, 1)
    assert mean.dtype == invvar.dtype == paddle.float32 and mean.shape == [2, 3]
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(-1), rtol=1e-6)
    np.testing.assert_allclose(invvar.numpy(), 1 / np.sqrt(x.numpy().var(-1) + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("weight_shape, dtype, epsilon, message", [
    ([9], "float32", 1e-5, "weight must have shape"),
    ([8, 1], "float32", 1e-5, "weight must have shape"),
    ([8], "int64", 1e-5, "must be float32 or float64"),
    ([8], "float32", 0.0, "epsilon must be > 0"),
])
def test_bad_input_is_a_clear_error(ops, weight_shape, dtype, epsilon, message):
    x = paddle.ones([2, 8], dtype)
    weight, bias = paddle.ones(weight_shape, dtype), paddle.zeros([8], dtype)
    with pytest.raises(Exception, match=message):
        ops.fused_ln(x, weight, bias, epsilon, 1)


def test_an_unbuildable_op_falls_back_to_paddle_with_one_warning(monkeypatch, caplog):
    def no_compiler():
        raise OSError("no C++ compiler")

    monkeypatch.setattr(external_ops, "_state", {"module": None, "tried": False})
    monkeypatch.setattr(external_ops, "_build", no_compiler)
    layers = [layer_norm(8, fused=True) for _ in range(3)]
    assert all(type(layer) is paddle.nn.LayerNorm for layer in layers)
    assert sum("fused ops unavailable" in r.message and "no C++ compiler" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="could not be built"):
        fused_ops(required=True)


def test_two_processes_building_at_once_both_load_the_op(tmp_path):
    script = textwrap.dedent("""
        import paddle
        from paddlemix.external_ops import fused_ops
        y = fused_ops(required=True).fused_ln(paddle.ones([2, 4]), paddle.ones([4]), paddle.zeros([4]), 1e-5, 1)[0]
        print("ok", float(y.abs().sum()))
    """)
    env = dict(os.environ, PPMIX_HOME=str(tmp_path))
    processes = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert all("ok 0.0" in output for output in outputs), outputs


def test_a_model_with_fused_ln_computes_what_the_plain_one_does(ops):
    config = AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-32")
    config.vision_cfg.layers = config.text_cfg.layers = 2
    fused_config = copy.deepcopy(config)
    fused_config.vision_cfg.fusedLN = fused_config.text_cfg.fusedLN = True
    paddle.seed(0)
    plain, fused = AutoModel.from_config(config), AutoModel.from_config(fused_config)
    fused.set_state_dict(plain.state_dict())
    norms = [layer for layer in fused.sublayers() if isinstance(layer, paddle.nn.LayerNorm)]
    assert norms and all(isinstance(layer, FusedLayerNorm) for layer in norms)
    image, ids = paddle.randn([2, 3, 224, 224]), paddle.randint(1, 49407, [2, 77])
    grads = []
    for model in (plain, fused):
        model(image=image, input_ids=ids)["loss"].backward()
        grads.append({name: p.grad.numpy() for name, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5, err_msg=name)
