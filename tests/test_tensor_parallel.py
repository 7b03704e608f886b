"""Tensor parallelism on CPU: a clear refusal to start, exact weight split/merge, and the split
layout computing the same block as the unsharded one."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix import AutoModel
from paddlemix.external_ops import SWITCH
from paddlemix.models import CLIPConfig
from paddlemix.models.layers import parallel
from paddlemix.models.layers.parallel import (
    TensorParallelUnavailableError,
    merge_state_dicts,
    tensor_parallel_layout,
    split_state_dict,
)

from test_eva_model import tiny_eva02

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distributed" / "parallel_layer_norm_worker.py"


def unsharded_state(config: CLIPConfig) -> dict:
    paddle.seed(0)
    model = AutoModel.from_config(config)
    rng = np.random.default_rng(0)  # no parameter left at a constant, so a misplaced slice shows
    return {k: v.numpy() + rng.standard_normal(v.shape).astype("float32") for k, v in model.state_dict().items()}


def test_tensor_parallel_on_a_cpu_build_fails_at_start_up_with_the_fix():
    config = tiny_eva02()
    config.tensor_parallel_degree = 2
    with pytest.raises(TensorParallelUnavailableError, match="needs GPUs.*--tensor_parallel_degree 1"):
        AutoModel.from_config(config)


@pytest.mark.parametrize("degree", [2, 4])
def test_split_then_merge_is_the_identity(degree):
    config = tiny_eva02(width=64, head_width=16, mlp_ratio=2.0)
    state = unsharded_state(config)
    layout = tensor_parallel_layout(AutoModel.from_config(config))
    shards = [split_state_dict(state, layout, degree, rank) for rank in range(degree)]
    merged = merge_state_dicts(shards, layout)
    assert merged.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(merged[key], state[key], err_msg=key)
    qkv = "visual.transformer.resblocks.0.attn.qkv.weight"
    assert shards[0][qkv].shape == (64, 3 * 64 // degree)
    assert "visual.transformer.resblocks.0.attn.out_proj.bias" not in layout  # replicated


def test_the_layers_declare_the_split_of_qkv_mlp_sub_ln_and_token_embedding():
    model = AutoModel.from_config(tiny_eva02(mlp_ratio=2.0))
    block = "visual.transformer.resblocks.1."
    layout = tensor_parallel_layout(model)
    assert {k[len(block):]: v for k, v in layout.items() if k.startswith(block)} == {
        "attn.qkv.weight": "qkv", "attn.q_bias": "vector", "attn.v_bias": "vector",
        "attn.inner_attn_ln.weight": "vector", "attn.inner_attn_ln.bias": "vector", "attn.out_proj.weight": "row",
        "mlp.w1.weight": "column", "mlp.w1.bias": "column", "mlp.w2.weight": "column", "mlp.w2.bias": "column",
        "mlp.ffn_ln.weight": "vector", "mlp.ffn_ln.bias": "vector", "mlp.w3.weight": "row"}
    assert layout["text.token_embedding.weight"] == "vocab"
    assert layout["text.transformer.resblocks.0.mlp.c_fc.bias"] == "column"
    assert not any(k.startswith(("visual.ln_", "visual.proj", "visual.conv1", "logit_scale")) for k in layout)


def test_split_layout_computes_the_unsharded_attention_and_mlp(monkeypatch):
    """Each rank runs its heads / hidden units; LayerNorm statistics and the row-parallel partial
    outputs are summed over ranks, as the parallel layers do. The sum equals the unsharded block
    (computed with Paddle's ops, as the sums here are)."""
    monkeypatch.setenv(SWITCH, "0")
    degree = 2
    config = tiny_eva02(mlp_ratio=2.0)
    model = AutoModel.from_config(config)
    model.eval()
    state = unsharded_state(config)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    block = model.visual.transformer.resblocks[0]
    prefix = "visual.transformer.resblocks.0."
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 17, 32)).astype("float32"))
    rope = model.visual.rope

    def shard(rank):
        shards = split_state_dict(state, tensor_parallel_layout(model), degree, rank)
        return {k[len(prefix):]: paddle.to_tensor(v) for k, v in shards.items()
                if k.startswith(prefix)}

    def distributed_layer_norm(parts, weights, biases, eps):
        full = paddle.concat(parts, axis=-1)
        mean, var = full.mean(-1, keepdim=True), full.var(-1, unbiased=False, keepdim=True)
        return [(p - mean) / paddle.sqrt(var + eps) * w + b for p, w, b in zip(parts, weights, biases)]

    shards = [shard(rank) for rank in range(degree)]
    heads, head_width = 2 // degree, 16
    context = []
    for s in shards:
        bias = paddle.concat([s["attn.q_bias"], paddle.zeros_like(s["attn.q_bias"]), s["attn.v_bias"]])
        qkv = (x @ s["attn.qkv.weight"] + bias).reshape([2, 17, 3, heads, head_width])
        q, k, v = qkv.unbind(2)
        q = paddle.einsum("bnhd,nde->bnhe", q, rope)
        k = paddle.einsum("bnhd,nde->bnhe", k, rope)
        probs = F.softmax(paddle.einsum("bqhd,bkhd->bhqk", q * head_width**-0.5, k), axis=-1)
        context.append(paddle.einsum("bhqk,bkhd->bqhd", probs, v).reshape([2, 17, heads * head_width]))
    normed = distributed_layer_norm(context, [s["attn.inner_attn_ln.weight"] for s in shards],
                                    [s["attn.inner_attn_ln.bias"] for s in shards], 1e-6)
    attention = sum(n @ s["attn.out_proj.weight"] for n, s in zip(normed, shards)) + shards[0]["attn.out_proj.bias"]
    np.testing.assert_allclose(attention.numpy(), block.attn(x, rope=rope).numpy(), rtol=1e-5, atol=1e-5)

    hidden = [F.silu(x @ s["mlp.w1.weight"] + s["mlp.w1.bias"]) * (x @ s["mlp.w2.weight"] + s["mlp.w2.bias"])
              for s in shards]
    normed = distributed_layer_norm(hidden, [s["mlp.ffn_ln.weight"] for s in shards],
                                    [s["mlp.ffn_ln.bias"] for s in shards], 1e-6)
    mlp = sum(n @ s["mlp.w3.weight"] for n, s in zip(normed, shards)) + shards[0]["mlp.w3.bias"]
    np.testing.assert_allclose(mlp.numpy(), block.mlp(x).numpy(), rtol=1e-5, atol=1e-5)


def test_parallel_layer_norm_on_two_processes_equals_layer_norm(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
         str(WORKER), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"

    spec = importlib.util.spec_from_file_location("parallel_layer_norm_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    x, weight, bias, loss_weights = (paddle.to_tensor(a) for a in worker.inputs())
    for t in (x, weight, bias):
        t.stop_gradient = False
    y = F.layer_norm(x, [worker.WIDTH], weight, bias, worker.EPSILON)
    (y * loss_weights).sum().backward()
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    np.testing.assert_allclose(np.concatenate([r["y"] for r in ranks], -1), y.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r["x_grad"] for r in ranks], -1), x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r["weight_grad"] for r in ranks]), weight.grad.numpy(), rtol=1e-9)
    np.testing.assert_allclose(np.concatenate([r["bias_grad"] for r in ranks]), bias.grad.numpy(), rtol=1e-9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_parallel_layer_norm_statistics_of_half_precision_input_are_float32(dtype, monkeypatch):
    """One rank holding the whole width (the cross-rank sum an identity): ParallelLayerNorm of a
    half-precision input equals a float32 LayerNorm cast back, as open_clip's LayerNormFp32."""
    monkeypatch.setattr(parallel._AllReduceSum, "apply", staticmethod(lambda sums, group: sums))
    norm = parallel.ParallelLayerNorm(64, 1, 1e-5)
    norm.weight.set_value(paddle.rand([64]) + 0.5)
    norm.bias.set_value(paddle.rand([64]))
    x = (paddle.randn([4, 64]) * 10 + 300).astype(dtype)  # half-precision sums of squares would overflow / round
    y = norm(x)
    assert y.dtype == x.dtype
    reference = F.layer_norm(x.astype("float32"), [64], norm.weight, norm.bias, 1e-5).astype(dtype)
    np.testing.assert_allclose(y.astype("float32").numpy(), reference.astype("float32").numpy(), rtol=0, atol=2e-2)
