"""paddlemix.external_ops: the fused_ln and fused_bias_gelu ops (built here, CPU) against Paddle's own
ops, their bad-input errors, the fallback with one warning, a race-free build from two processes, the
PPMIX_FUSED_OPS switch, and models, which use the ops by default (onednn_linear: test_onednn_linear.py)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import paddlemix.external_ops as external_ops
from paddlemix import AutoConfig, AutoModel
from paddlemix.external_ops import cpu_threads, fused_ops
from paddlemix.models.layers import attention as attention_module
from paddlemix.models.layers.attention import Attention, CrossAttention
from paddlemix.models.layers import embedding as embedding_module
from paddlemix.models.layers import linear as linear_module
from paddlemix.models.layers import mlp as mlp_module
from paddlemix.models.layers import norm as norm_module
from paddlemix.models.layers import rope as rope_module
from paddlemix.models.layers.norm import layer_norm
from paddlemix.models.loss_registry import build_loss, training_loss
from op_calls import CallCounter

SHAPES = [(1, 1), (7, 3), (5, 33), (3, 1, 17), (4, 197, 768), (2, 1025, 1408)]
GELU_SHAPES = [(1, 1), (3, 5), (2, 7, 33), (4, 197, 3072)]


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
    x = paddle.randn([2, 8])
    norm = layer_norm(8)
    for _ in range(3):
        np.testing.assert_allclose(norm(x).numpy(), F.layer_norm(x, 8, norm.weight, norm.bias, 1e-5).numpy())
    assert sum("fused ops unavailable" in r.message and "no C++ compiler" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="could not be built"):
        fused_ops(required=True)


def test_a_build_is_reused_only_on_a_cpu_with_the_same_model_and_flags(monkeypatch):
    """The ops are compiled with -march=native: another CPU (a shared $PPMIX_HOME) gets its own build."""
    here = external_ops.build_directory()
    monkeypatch.setattr(external_ops, "cpu_signature", lambda: "GenuineIntel|Xeon|avx avx2 avx512f amx_tile")
    elsewhere = external_ops.build_directory()
    assert elsewhere.parent == here.parent and elsewhere != here
    monkeypatch.undo()
    assert external_ops.build_directory() == here  # this CPU again: its own build, reused


def test_two_processes_building_at_once_both_load_the_op_and_later_ones_load_the_finished_build(tmp_path):
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

    # Later processes load the finished build's library without Paddle's setup step; a build
    # directory without the mark (a build killed halfway) is built again, never loaded.
    without_setup = textwrap.dedent("""
        import paddle.utils.cpp_extension as extension

        def refuse(**options):
            raise RuntimeError("the setup step ran")

        extension.load = refuse
        from paddlemix import external_ops
        print("loaded" if external_ops.fused_ops() is not None else external_ops._state["error"])
    """)
    assert subprocess.run([sys.executable, "-c", without_setup], env=env, capture_output=True, text=True,
                          timeout=120).stdout.split("\n")[-2] == "loaded"
    marks = list(tmp_path.glob(f"external_ops/*/{external_ops.BUILT_MARK}"))
    assert len(marks) == 1
    marks[0].unlink()
    assert subprocess.run([sys.executable, "-c", without_setup], env=env, capture_output=True, text=True,
                          timeout=120).stdout.split("\n")[-2] == "the setup step ran"


def test_setup_py_installs_the_module_that_fused_ops_then_loads(tmp_path):
    """`python setup.py install` (here into a prefix) builds every op; paddlemix loads that module
    instead of building its own."""
    source = Path(external_ops.__file__).parent
    shutil.copytree(source, tmp_path / "external_ops", ignore=shutil.ignore_patterns("__pycache__", "build"))
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "setup.py", "install", "--prefix", str(prefix)], cwd=tmp_path / "external_ops",
                   check=True, capture_output=True, text=True)
    site_packages = next(prefix.glob("lib/python*/site-packages"))
    script = textwrap.dedent("""
        import paddle
        from paddlemix.external_ops import fused_ops
        ops = fused_ops(required=True)
        x = paddle.to_tensor([[-1.0, 0.0, 2.0]])
        print(ops.__file__)
        print(ops.fused_ln(x, paddle.ones([3]), paddle.zeros([3]), 1e-5, 1)[0].numpy().round(4).tolist())
        print(ops.fused_bias_gelu(x, paddle.ones([3]), False, 1).numpy().round(4).tolist())
        print(ops.onednn_linear(x, paddle.eye(3), paddle.ones([3]), 1, False, False, 1)[0].numpy().round(4).tolist())
    """)
    env = dict(os.environ, PYTHONPATH=str(site_packages), PPMIX_HOME=str(tmp_path / "home"))
    lines = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert lines[0].startswith(str(site_packages))
    np.testing.assert_allclose(eval(lines[1]), [[-1.069, -0.2673, 1.3363]], atol=1e-4)
    np.testing.assert_allclose(eval(lines[2]), [[0.0, 0.8413, 2.9960]], atol=1e-4)
    np.testing.assert_allclose(eval(lines[3]), [[0.0, 0.8413, 2.9960]], atol=1e-4)
    assert not (tmp_path / "home" / "external_ops").exists()  # nothing was built on first use


def bias_gelu_and_grads(ops, x_values, bias, dy, dtype, quick, fused):
    """y, dx, dbias (float64 numpy) of act(x + bias), loss sum(y * dy)."""
    x, b = (paddle.to_tensor(v.astype(dtype)) for v in (x_values, bias))
    for tensor in (x, b):
        tensor.stop_gradient = False
    if fused:
        y = ops.fused_bias_gelu(x, b, quick, cpu_threads())
    else:
        z = x + b
        y = z * F.sigmoid(1.702 * z) if quick else F.gelu(z)
    (y * paddle.to_tensor(dy.astype(dtype))).sum().backward()
    return [t.numpy().astype(np.float64) for t in (y, x.grad, b.grad)]


@pytest.mark.parametrize("quick", [False, True], ids=["gelu", "quick_gelu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", GELU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bias_gelu_forward_and_two_gradients_match_paddle(ops, shape, dtype, quick):
    """Within 1e-5 (relative to each tensor's largest value) of Paddle's ops in the same dtype and
    of float64 ground truth; inputs spread over [-12, 12], past where erf and exp saturate."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape) * 4, rng.standard_normal(shape)
    bias = rng.standard_normal(shape[-1])
    ours = bias_gelu_and_grads(ops, x, bias, dy, dtype, quick, fused=True)
    paddles = bias_gelu_and_grads(ops, x, bias, dy, dtype, quick, fused=False)
    truth = bias_gelu_and_grads(ops, x, bias, dy, "float64", quick, fused=False)
    for name, mine, theirs, exact in zip(("y", "dx", "dbias"), ours, paddles, truth):
        tolerance = 1e-5 * max(1.0, float(np.abs(exact).max()))
        assert np.abs(mine - theirs).max() <= tolerance, name
        assert np.abs(mine - exact).max() <= tolerance, name


@pytest.mark.parametrize("quick", [False, True], ids=["gelu", "quick_gelu"])
def test_bias_gelu_saturates_and_keeps_nan(ops, quick):
    x = paddle.to_tensor(np.array([[-1e4, -100.0, 100.0, 1e4, np.nan, np.inf]], np.float32))
    x.stop_gradient = False
    y = ops.fused_bias_gelu(x, paddle.zeros([6]), quick, 1)
    y.backward(paddle.ones_like(y))
    np.testing.assert_allclose(y.numpy()[0, :4], [0, 0, 100, 1e4], rtol=0, atol=1e-30)
    np.testing.assert_allclose(x.grad.numpy()[0, :4], [0, 0, 1, 1], rtol=0, atol=1e-30)
    assert np.isnan(y.numpy()[0, 4]) and np.isnan(x.grad.numpy()[0, 4])


@pytest.mark.parametrize("bias_shape, dtype, bias_dtype, message", [
    ([9], "float32", "float32", "bias must have shape"),
    ([8, 1], "float32", "float32", "bias must have shape"),
    ([8], "int64", "int64", "must be float32 or float64"),
    ([8], "float32", "float64", "bias must have x's dtype"),
])
def test_bias_gelu_bad_input_is_a_clear_error(ops, bias_shape, dtype, bias_dtype, message):
    with pytest.raises(Exception, match=message):
        ops.fused_bias_gelu(paddle.ones([2, 8], dtype), paddle.zeros(bias_shape, bias_dtype), False, 1)


def loss_and_grads(model, image, ids):
    loss = training_loss(build_loss(model.config), model(image=image, input_ids=ids))
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    return float(loss), grads


@pytest.mark.parametrize("name", ["paddlemix/CLIP/ViT-B-32", "paddlemix/EVA/EVA01-CLIP-g-14",
                                  "paddlemix/EVA/EVA02-CLIP-B-16", "paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k"])
@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_models_use_the_fused_ops_by_default_and_compute_what_paddle_does(ops, monkeypatch, name, quick_gelu):
    """With no config key, every Linear (its activation included), every LayerNorm (EVA's sub-LNs
    too), the token embedding, every attention layer (CoCa's text tower with its padding mask per caption
    too), and EVA02's SwiGLU and rope run in the ops; PPMIX_FUSED_OPS=0 runs none, and the loss and every
    gradient are the same."""
    config = AutoConfig.from_pretrained(name)
    config.quick_gelu = quick_gelu
    for tower in (config.vision_cfg, config.text_cfg, getattr(config, "multimodal_cfg", None)):
        if tower is not None:
            tower.layers = 1
    paddle.seed(0)
    model = AutoModel.from_config(config)
    model.eval()  # no drop path: the two runs would draw different paths
    image = paddle.randn([2, 3, *model.visual.image_size])
    ids = paddle.randint(1, config.text_cfg.vocab_size - 1, [2, config.text_cfg.context_length])
    ids[1, 10:] = config.text_cfg.pad_id  # a short caption: CoCa's text tower masks its padding
    linears = CallCounter(monkeypatch, linear_module, "fused_linear")
    norms = CallCounter(monkeypatch, norm_module, "fused_layer_norm")
    embeddings = CallCounter(monkeypatch, embedding_module, "fused_embedding")
    attentions = CallCounter(monkeypatch, attention_module, "fused_attention")
    swiglus = CallCounter(monkeypatch, mlp_module, "fused_swiglu")
    ropes = CallCounter(monkeypatch, rope_module, "fused_rope")
    fused_loss, fused_grads = loss_and_grads(model, image, ids)
    layer_norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.LayerNorm)]
    assert linears.calls > 0 and linears.ran == linears.calls
    assert norms.ran == norms.calls >= len(layer_norms)
    assert embeddings.ran == embeddings.calls > 0
    attention_layers = [layer for layer in model.sublayers() if isinstance(layer, (Attention, CrossAttention))]
    assert attentions.ran == attentions.calls == len(attention_layers)  # CoCa's text tower, padding masked per caption
    swiglu_layers = [layer for layer in model.sublayers() if isinstance(layer, mlp_module.SwiGLU)]
    assert swiglus.ran == swiglus.calls == len(swiglu_layers)
    assert ropes.ran == ropes.calls == (2 if model.visual.rope is not None else 0)  # query and key of one block
    assert (len(swiglu_layers) > 0) == (ropes.ran > 0) == (name == "paddlemix/EVA/EVA02-CLIP-B-16")
    monkeypatch.setenv(external_ops.SWITCH, "0")
    for counter in (linears, norms, embeddings, attentions, swiglus, ropes):
        counter.runs.clear()
    plain_loss, plain_grads = loss_and_grads(model, image, ids)
    assert linears.ran == norms.ran == embeddings.ran == attentions.ran == swiglus.ran == ropes.ran == 0
    assert abs(fused_loss - plain_loss) <= 1e-5 * max(1.0, abs(plain_loss))
    assert fused_grads.keys() == plain_grads.keys()
    for key in plain_grads:
        np.testing.assert_allclose(fused_grads[key], plain_grads[key], rtol=1e-3, atol=1e-5, err_msg=key)


def test_the_switch_leaves_the_ops_unbuilt(tmp_path):
    """PPMIX_FUSED_OPS=0: a model trains a step with Paddle's ops, and nothing is compiled."""
    script = textwrap.dedent("""
        import paddle
        from paddlemix import AutoConfig, AutoModel
        from paddlemix.external_ops import fused_ops
        config = AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-32")
        config.vision_cfg.layers = config.text_cfg.layers = 1
        model = AutoModel.from_config(config)
        out = model(image=paddle.randn([2, 3, 224, 224]), input_ids=paddle.randint(1, 100, [2, 77]))
        out["image_features"].sum().backward()
        print("module", fused_ops())
    """)
    env = dict(os.environ, PPMIX_HOME=str(tmp_path), **{external_ops.SWITCH: "0"})
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr
    assert "module None" in output.stdout
    assert not (tmp_path / "external_ops").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_layer_norm_of_half_precision_input_is_computed_in_float32(dtype):
    """open_clip's LayerNormFp32: statistics of float16 / bfloat16 activations (as under AMP) in float32."""
    norm = layer_norm(64)
    x = (paddle.randn([4, 64]) * 100 + 1000).astype(dtype)  # large mean: half-precision statistics would be off
    y = norm(x)
    assert y.dtype == x.dtype
    reference = paddle.nn.functional.layer_norm(x.astype("float32"), [64], norm.weight, norm.bias, norm._epsilon)
    np.testing.assert_array_equal(y.astype("float32").numpy(), reference.astype(dtype).astype("float32").numpy())


@pytest.mark.parametrize("id_dtype", ["int64", "int32"])
@pytest.mark.parametrize("ids_shape, vocabulary, width", [((1,), 1, 1), ((3, 5), 7, 4), ((32, 77), 49408, 512)],
                         ids=["1x1", "small", "clip"])
def test_token_embedding_and_its_gradient_equal_paddle_embedding(ops, ids_shape, vocabulary, width, id_dtype):
    """Repeated ids sum their rows' gradients; every other row's gradient is zero."""
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(0, min(vocabulary, 50), ids_shape).astype(id_dtype))  # many repeats
    dout = paddle.to_tensor(rng.standard_normal((*ids_shape, width)).astype("float32"))
    results = []
    for lookup in (lambda w: ops.token_embedding(ids, w, cpu_threads()), lambda w: F.embedding(ids, w)):
        weight = paddle.to_tensor(rng.standard_normal((vocabulary, width)).astype("float32"))
        weight.stop_gradient = False
        out = lookup(weight)
        out.backward(dout)
        results.append((out.numpy() - weight.numpy()[ids.numpy()], weight.grad.numpy()))
    np.testing.assert_array_equal(results[0][0], 0)  # the rows themselves
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)


def test_token_embedding_names_an_id_outside_the_vocabulary(ops):
    with pytest.raises(Exception, match=r"id 9 at position 2 is outside the vocabulary \[0, 5\)"):
        ops.token_embedding(paddle.to_tensor([0, 4, 9]), paddle.ones([5, 3]), 1)
