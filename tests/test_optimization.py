"""Optimizer construction: per-parameter lr/wd against hand tables, one AdamW/Lamb step against
numpy, clipping by one global norm across groups, the warm-up + cosine schedule."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models import CLIPConfig, TextConfig, VisionConfig
from paddlemix.external_ops import SWITCH, fused_ops
from paddlemix.trainer import optimization
from paddlemix.trainer.optimization import (
    GlobalNormClip,
    build_optimizer,
    cosine_schedule,
    group_learning_rates,
    parameter_groups,
    parameter_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_LR = 1e-3
TOWER_SETTINGS = dict(visual_lr=4e-3, text_lr=2e-3, visual_ld=0.5, text_ld=0.8, visual_wd=0.2, text_wd=0.1)


def tiny_clip(seed: int = 0):
    """Two vision and two text blocks."""
    paddle.seed(seed)
    return AutoModel.from_config(CLIPConfig(
        embed_dim=16,
        vision_cfg=VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=2),
        text_cfg=TextConfig(context_length=12, vocab_size=64, width=32, heads=2, layers=2),
    ))


def tiny_eva_with_biases():
    """An EVA-02-style tiny model with every kind of parameter the exemptions name (q/v biases, sub-LN,
    layer scale, projection biases)."""
    return AutoModel.from_config(CLIPConfig(
        embed_dim=8,
        vision_cfg=VisionConfig(image_size=16, patch_size=8, width=16, head_width=8, layers=12, attn_bias="qv",
                                subln=True, naiveswiglu=True, ls_init_value=0.1, proj_bias=True, patch_bias=True),
        text_cfg=TextConfig(context_length=6, vocab_size=10, width=16, heads=2, layers=12, proj_bias=True),
    ))


@pytest.mark.parametrize("name, expected", [
    ("visual.conv1.weight", 0), ("visual.class_embedding", 0), ("visual.positional_embedding", 0),
    ("visual.ln_pre.bias", 0), ("text.token_embedding.weight", 0), ("text.positional_embedding", 0),
    ("visual.transformer.resblocks.0.attn.qkv.weight", 1), ("visual.transformer.resblocks.11.ls_2.gamma", 12),
    ("visual.ln_post.weight", 13), ("visual.proj", 13), ("visual.proj_bias", 13), ("text.ln_final.weight", 13),
    ("text.text_projection.weight", 13), ("text.transformer.resblocks.3.mlp.c_fc.weight", 4),
])
def test_each_tower_declares_the_layer_id_of_its_stem_blocks_and_head(name, expected):
    model = tiny_eva_with_biases()
    tower, _, rest = name.partition(".")
    assert rest in dict(getattr(model, tower).named_parameters())
    assert getattr(model, tower).layer_id(rest) == expected


@pytest.mark.parametrize("name, exempt", [
    ("visual.conv1.weight", False),
    ("visual.conv1.bias", True),
    ("visual.class_embedding", True),
    ("visual.positional_embedding", True),
    ("text.positional_embedding", True),
    ("visual.transformer.resblocks.0.attn.q_bias", True),
    ("visual.transformer.resblocks.0.attn.inner_attn_ln.weight", True),
    ("visual.transformer.resblocks.0.mlp.ffn_ln.bias", True),
    ("visual.transformer.resblocks.0.ls_1.gamma", True),
    ("visual.transformer.resblocks.0.attn.qkv.weight", False),
    ("visual.transformer.resblocks.0.mlp.w3.weight", False),
    ("visual.proj", False),
    ("visual.proj_bias", True),
    ("text.token_embedding.weight", False),
    ("text.text_projection.weight", False),
    ("text.text_projection.bias", True),
    ("logit_scale", True),
])
def test_the_model_declares_vectors_norms_and_embeddings_exempt_from_decay_but_not_matrices(name, exempt):
    model = tiny_eva_with_biases()
    assert name in dict(model.named_parameters())
    assert (name in model.no_weight_decay()) is exempt


def test_every_parameter_gets_its_towers_lr_layer_decay_and_weight_decay():
    model = tiny_clip()
    groups = parameter_groups(model, BASE_LR, weight_decay=0.05, **TOWER_SETTINGS)
    settings = parameter_settings(groups)
    # (lr multiplier, weight decay), by hand: visual 4e-3 * 0.5 ** (3 - layer) / 1e-3,
    # text 2e-3 * 0.8 ** (3 - layer) / 1e-3; exempt parameters have no decay.
    expected = {
        "visual.conv1.weight": (0.5, 0.2),
        "visual.class_embedding": (0.5, 0.0),
        "visual.ln_pre.weight": (0.5, 0.0),
        "visual.transformer.resblocks.0.attn.qkv.weight": (1.0, 0.2),
        "visual.transformer.resblocks.1.mlp.c_fc.bias": (2.0, 0.0),
        "visual.ln_post.weight": (4.0, 0.0),
        "visual.proj": (4.0, 0.2),
        "text.token_embedding.weight": (1.024, 0.1),
        "text.positional_embedding": (1.024, 0.0),
        "text.transformer.resblocks.0.ln_1.weight": (1.28, 0.0),
        "text.transformer.resblocks.1.attn.out_proj.weight": (1.6, 0.1),
        "text.text_projection": (2.0, 0.1),
        "text.ln_final.bias": (2.0, 0.0),
        "logit_scale": (1.0, 0.0),
    }
    for name, (multiplier, decay) in expected.items():
        assert settings[name][0] == pytest.approx(multiplier), name
        assert settings[name][1] == decay, name
    assert sorted(settings) == sorted(name for name, _ in model.named_parameters())
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names)) and "visual.layer3.decay" in names and "other.no_decay" in names
    for group in groups:
        assert len({settings[name] for name in group["param_names"]}) == 1, group["name"]


def test_unset_tower_settings_fall_back_to_the_global_ones():
    groups = parameter_groups(tiny_clip(), BASE_LR, weight_decay=0.05, layer_decay=0.5, visual_lr=3e-3)
    settings = parameter_settings(groups)
    assert settings["visual.conv1.weight"] == pytest.approx((3.0 * 0.5 ** 3, 0.05))
    assert settings["text.token_embedding.weight"] == pytest.approx((0.5 ** 3, 0.05))
    assert settings["text.transformer.resblocks.1.mlp.c_proj.weight"] == pytest.approx((0.5, 0.05))
    assert settings["text.text_projection"] == pytest.approx((1.0, 0.05))
    no_decay_at_all = parameter_settings(parameter_groups(tiny_clip(), BASE_LR, weight_decay=0.05))
    assert {multiplier for multiplier, _ in no_decay_at_all.values()} == {1.0}


def test_frozen_tower_is_left_out_of_every_group():
    model = tiny_clip()
    for param in model.visual.parameters():
        param.stop_gradient = True
    groups = parameter_groups(model, BASE_LR, weight_decay=0.05)
    names = parameter_settings(groups)
    assert names and not any(name.startswith("visual.") for name in names)
    assert not any(group["name"].startswith("visual.") for group in groups)
    optimizer = build_optimizer("adamw", model, BASE_LR, learning_rate=BASE_LR, weight_decay=0.05,
                                beta1=0.9, beta2=0.98, epsilon=1e-6)
    frozen = {id(param) for param in model.visual.parameters()}
    assert not any(id(p) in frozen for group in optimizer._param_groups for p in group["params"])


# ---- one optimizer step against numpy

BETA1, BETA2, EPSILON = 0.9, 0.98, 0.1  # a large epsilon, so where Paddle adds it matters


def numpy_adamw(p, g, lr, wd):
    """First AdamW step as Paddle's kernel does it: decoupled decay by lr * wd, then Adam with
    lr * sqrt(1 - b2) / (1 - b1) and epsilon scaled by sqrt(1 - b2)."""
    m, v = (1 - BETA1) * g, (1 - BETA2) * g * g
    p = p * (1 - lr * wd)
    lr_t = lr * math.sqrt(1 - BETA2) / (1 - BETA1)
    return p - lr_t * m / (np.sqrt(v) + EPSILON * math.sqrt(1 - BETA2))


def numpy_lamb(p, g, lr, wd):
    """First LAMB step (bias-corrected moments, decay inside the trust ratio); with wd == 0
    Paddle (always_adapt=False) uses no trust ratio."""
    m_hat = (1 - BETA1) * g / (1 - BETA1)
    v_hat = (1 - BETA2) * g * g / (1 - BETA2)
    update = m_hat / (np.sqrt(v_hat) + EPSILON) + wd * p
    ratio = np.linalg.norm(p) / np.linalg.norm(update) if wd > 0 else 1.0
    return p - lr * ratio * update


REFERENCES = {"adamw": numpy_adamw, "lamb": numpy_lamb}
# Two decaying parameters in groups with different multipliers and decays, and one exempt one.
CHECKED = ("visual.proj", "text.transformer.resblocks.0.mlp.c_fc.weight", "text.ln_final.weight")


def set_known_grads(model, seed=1):
    """Backward of sum(p * G) over all parameters, so each gradient is exactly G."""
    rng = np.random.default_rng(seed)
    grads = {name: rng.standard_normal(p.shape).astype("float32") for name, p in model.named_parameters()}
    loss = paddle.add_n([(p * paddle.to_tensor(grads[name])).sum() for name, p in model.named_parameters()])
    loss.backward()
    return grads


def one_step(optimizer_name, max_grad_norm, naive_lamb_groups=False):
    """Parameters before, gradients, parameters after one update at the second schedule step."""
    model = tiny_clip()
    before = {name: p.numpy().astype("float64") for name, p in model.named_parameters()}
    schedule = cosine_schedule(BASE_LR, warmup_steps=4, total_steps=20)
    schedule.step()  # lr = BASE_LR * 2 / 4
    if naive_lamb_groups:  # our groups as they are, weight_decay key and all
        groups = parameter_groups(model, BASE_LR, 0.05, **TOWER_SETTINGS)
        optimizer = paddle.optimizer.Lamb(learning_rate=schedule, beta1=BETA1, beta2=BETA2, epsilon=EPSILON,
                                          parameters=groups)
    else:
        optimizer = build_optimizer(optimizer_name, model, schedule, learning_rate=BASE_LR, weight_decay=0.05,
                                    beta1=BETA1, beta2=BETA2, epsilon=EPSILON, max_grad_norm=max_grad_norm,
                                    **TOWER_SETTINGS)
    grads = set_known_grads(model)
    optimizer.step()
    return before, grads, {name: p.numpy().astype("float64") for name, p in model.named_parameters()}, optimizer


@pytest.mark.parametrize("max_grad_norm", [0.0, 5.0])
@pytest.mark.parametrize("optimizer_name", ["adamw", "lamb"])
def test_one_step_equals_numpy_reference_with_group_lr_multipliers_and_decays(optimizer_name, max_grad_norm):
    before, grads, after, optimizer = one_step(optimizer_name, max_grad_norm)
    scale = 1.0
    if max_grad_norm:
        global_norm = math.sqrt(sum(float(np.sum(g.astype("float64") ** 2)) for g in grads.values()))
        scale = min(1.0, max_grad_norm / (global_norm + 1e-6))
        assert scale < 0.1  # clipping is active
    scheduled_lr = BASE_LR * 2 / 4
    # by hand: visual.proj 4e-3 * 0.5 ** 0, wd 0.2; text block 0: 2e-3 * 0.8 ** 2, wd 0.1; ln_final: 2e-3, no decay
    hand = {CHECKED[0]: (4.0, 0.2), CHECKED[1]: (2.0 * 0.64, 0.1), CHECKED[2]: (2.0, 0.0)}
    for name, (multiplier, wd) in hand.items():
        expected = REFERENCES[optimizer_name](before[name], grads[name] * scale, scheduled_lr * multiplier, wd)
        np.testing.assert_allclose(after[name], expected, rtol=2e-5, atol=1e-7, err_msg=name)
        assert not np.allclose(after[name], before[name])
    logged = group_learning_rates(optimizer, scheduled_lr)
    assert logged["lr/visual.layer3"] == pytest.approx(4e-3 * 0.5)


def test_lamb_with_a_weight_decay_key_in_its_groups_computes_something_else():
    """Paddle's trap: Lamb groups read lamb_weight_decay; weight_decay becomes L2 on the gradient."""
    before, grads, after, _ = one_step("lamb", 0.0, naive_lamb_groups=True)
    name = CHECKED[0]
    right = numpy_lamb(before[name], grads[name], BASE_LR * 2 / 4 * 4.0, 0.2)
    assert not np.allclose(after[name], right, rtol=1e-4, atol=1e-6)


def test_unknown_optimizer_name_and_mismatched_schedule_are_refused():
    kwargs = dict(learning_rate=BASE_LR, weight_decay=0.0, beta1=0.9, beta2=0.98, epsilon=1e-6)
    with pytest.raises(ValueError, match="adamw, lamb"):
        build_optimizer("sgd", tiny_clip(), BASE_LR, **kwargs)
    with pytest.raises(ValueError, match="peaks at 0.002"):
        build_optimizer("adamw", tiny_clip(), cosine_schedule(2e-3, 1, 10), **kwargs)


# ---- the fused AdamW step (one cpu_adamw call) against Paddle's per-parameter step

def fused_step_counter(monkeypatch):
    """The number of steps the cpu_adamw op has done so far, as a one-element list."""
    calls = [0]
    real = optimization.fused_adamw

    def counting(*args, **kwargs):
        done = real(*args, **kwargs)
        calls[0] += done
        return done

    monkeypatch.setattr(optimization, "fused_adamw", counting)
    return calls


def train_steps(monkeypatch, fused_per_step, max_grad_norm=5.0, flat=False, seed=0, adjust=None):
    """Parameters and optimizer state after len(fused_per_step) steps of build_optimizer's AdamW on a
    tiny CLIP (groups with different lr multipliers and decays, decay-exempt parameters, one parameter
    without a gradient), each step with the ops on or off as `fused_per_step` says; and the number of
    steps the op did. `adjust(optimizer)` may change the optimizer first."""
    calls = fused_step_counter(monkeypatch)
    model = tiny_clip(seed)
    schedule = cosine_schedule(BASE_LR, warmup_steps=2, total_steps=10)
    settings = {} if flat else TOWER_SETTINGS
    optimizer = build_optimizer("adamw", model, schedule, learning_rate=BASE_LR, weight_decay=0.05, beta1=BETA1,
                                beta2=BETA2, epsilon=1e-6, max_grad_norm=max_grad_norm, flat=flat, **settings)
    if adjust is not None:
        adjust(optimizer)
    for step, fused in enumerate(fused_per_step):
        monkeypatch.setenv(SWITCH, "1" if fused else "0")
        set_known_grads(model, seed=step)
        model.logit_scale.clear_gradient(set_to_zero=False)  # a parameter with no gradient this step
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
    state = {f"{name} {kind}": accumulators[param.name].numpy() for name, param in model.named_parameters()
             for kind, accumulators in optimizer._accumulators.items() if param.name in accumulators}
    return {name: p.numpy() for name, p in model.named_parameters()}, state, calls[0]


def assert_same_training(got, expected, rtol=1e-5):
    """Equal up to float32 rounding order (Paddle's kernel may fuse multiply-adds)."""
    (params, state, _), (expected_params, expected_state, _) = got, expected
    assert state.keys() == expected_state.keys() and any(key.endswith("beta2_pow_acc") for key in state)
    for name in expected_params:
        np.testing.assert_allclose(params[name], expected_params[name], rtol=rtol, atol=1e-7, err_msg=name)
    for key in expected_state:
        np.testing.assert_allclose(state[key], expected_state[key], rtol=rtol, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("max_grad_norm, flat", [(5.0, False), (0.0, False), (0.0, True)])  # flat + clip needs fleet
def test_fused_adamw_steps_equal_paddles_steps(monkeypatch, max_grad_norm, flat):
    fused_ops(required=True)
    paddles = train_steps(monkeypatch, [False] * 4, max_grad_norm, flat)
    fused = train_steps(monkeypatch, [True] * 4, max_grad_norm, flat)
    assert paddles[2] == 0 and fused[2] == 4
    assert_same_training(fused, paddles)
    assert not np.allclose(fused[0]["visual.proj"], tiny_clip().visual.proj.numpy())  # the parameters moved


def test_a_run_that_switches_between_fused_and_paddles_steps_continues_the_same_state(monkeypatch):
    """The op keeps Paddle's accumulators: a run resumed either way continues alike."""
    fused_ops(required=True)
    mixed = train_steps(monkeypatch, [True, True, False, True, False])
    assert mixed[2] == 3
    assert_same_training(mixed, train_steps(monkeypatch, [False] * 5))


def test_options_the_op_lacks_run_paddles_step(monkeypatch):
    def different_betas(optimizer):
        optimizer._param_groups[0]["beta1"] = 0.5

    fused_ops(required=True)
    fused = train_steps(monkeypatch, [True] * 3, adjust=different_betas)
    assert fused[2] == 0
    assert_same_training(fused, train_steps(monkeypatch, [False] * 3, adjust=different_betas))


def test_cpu_adamw_refuses_mismatched_inputs():
    ops = fused_ops(required=True)
    params, grads = [paddle.ones([3])], [paddle.ones([4])]
    moments = [paddle.zeros([3])]
    powers = [paddle.full([1], 0.9)]
    with pytest.raises(OSError, match="cpu_adamw: gradient 0 has 4 values, its parameter 3"):
        ops.cpu_adamw(params, grads, moments, [paddle.zeros([3])], powers, [paddle.full([1], 0.999)],
                      paddle.ones([]), [1e-3], [0.0], 0.9, 0.999, 1e-8, 1)
    with pytest.raises(OSError, match="one entry per parameter"):
        ops.cpu_adamw(params, [paddle.ones([3])], moments, [paddle.zeros([3])], powers, [paddle.full([1], 0.999)],
                      paddle.ones([]), [1e-3, 1e-3], [0.0], 0.9, 0.999, 1e-8, 1)


# ---- clipping

CLIP_GRADS = [np.array([3.0, 0.0, 4.0], "float32"), np.array([[12.0, 0.0], [0.0, 0.0]], "float32")]
MAX_NORM = 2.0


def named(params):
    return [(f"p{i}", p) for i, p in enumerate(params)]


def sgd_updates(make_clip):
    """Two SGD steps (lr 1) over one parameter per group, with gradients CLIP_GRADS and then twice
    those; returns each step's applied gradients and the clip."""
    params = [paddle.create_parameter(list(g.shape), "float32") for g in CLIP_GRADS]
    clip = make_clip(params)
    optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=[{"params": [p]} for p in params], grad_clip=clip)
    applied = []
    for factor in (1.0, 2.0):
        before = [p.numpy() for p in params]
        paddle.add_n([(p * paddle.to_tensor(factor * g)).sum() for p, g in zip(params, CLIP_GRADS)]).backward()
        optimizer.step()
        optimizer.clear_grad()
        applied.append([b - p.numpy() for b, p in zip(before, params)])
    return applied, clip


def test_global_norm_clip_scales_every_group_by_the_norm_over_all_groups():
    applied, clip = sgd_updates(lambda params: GlobalNormClip(MAX_NORM, named(params)))
    for step, factor in enumerate((1.0, 2.0)):
        global_norm = factor * 13.0  # sqrt(3^2 + 4^2 + 12^2); the second step must not reuse the first's
        for got, g in zip(applied[step], CLIP_GRADS):
            np.testing.assert_allclose(got, factor * g * MAX_NORM / (global_norm + 1e-6), rtol=1e-5)
    assert float(clip.last_global_norm) == pytest.approx(26.0)


def test_paddles_clip_by_global_norm_would_clip_each_group_by_its_own_norm():
    applied, _ = sgd_updates(lambda params: paddle.nn.ClipGradByGlobalNorm(MAX_NORM))
    per_group_norms = (5.0, 12.0)
    for got, g, norm in zip(applied[0], CLIP_GRADS, per_group_norms):
        np.testing.assert_allclose(got, g * MAX_NORM / norm, rtol=1e-5)
        assert not np.allclose(got, g * MAX_NORM / 13.0, rtol=1e-3)


def test_global_norm_clip_leaves_small_gradients_alone():
    applied, _ = sgd_updates(lambda params: GlobalNormClip(100.0, named(params)))
    for got, g in zip(applied[0], CLIP_GRADS):
        np.testing.assert_allclose(got, g, rtol=1e-6)


# ---- schedule

@pytest.mark.parametrize("step, expected", [
    (0, 0.25), (1, 0.5), (3, 1.0),  # warm-up: base * (step + 1) / 4
    (4, 1.0), (6, 0.1 + 0.45 * (1 + math.sqrt(0.5))), (8, 0.55), (10, 0.1 + 0.45 * (1 - math.sqrt(0.5))),
    (12, 0.1), (15, 0.1),  # cosine from 1.0 to 0.1 over steps 4..12, then flat
])
def test_warmup_cosine_schedule_matches_open_clips_formula(step, expected):
    schedule = cosine_schedule(1.0, warmup_steps=4, total_steps=12, min_lr=0.1)
    for _ in range(step):
        schedule.step()
    assert schedule.get_lr() == pytest.approx(expected)


def test_schedule_without_room_for_decay_is_refused():
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        cosine_schedule(1.0, warmup_steps=10, total_steps=10)


# ---- clipping under tensor parallelism: 2 CPU processes (gloo)

TP_WORKER = """
import sys
import numpy as np
import paddle
import paddle.distributed as dist
from paddlemix.trainer.optimization import GlobalNormClip
from paddlemix.utils.distributed import run_script


def main(out_dir):
    dist.init_parallel_env()
    rank = dist.get_rank()
    qkv = paddle.create_parameter([2], "float32")  # a shard: each rank holds other values
    ln = paddle.create_parameter([2], "float32")  # replicated: the same gradient on both ranks
    grads = {"qkv": [[3.0, 0.0], [0.0, 4.0]][rank], "ln": [12.0, 0.0]}
    (qkv * paddle.to_tensor(grads["qkv"])).sum().backward()
    (ln * paddle.to_tensor(grads["ln"])).sum().backward()
    clip = GlobalNormClip(1.0, [("visual.transformer.resblocks.0.attn.qkv.weight", qkv), ("visual.ln_post.weight", ln)],
                          model_parallel_group=dist.new_group([0, 1]),
                          split_names=["visual.transformer.resblocks.0.attn.qkv.weight"])
    clip([(qkv, qkv.grad), (ln, ln.grad)])
    np.save(f"{out_dir}/norm{rank}.npy", clip.last_global_norm.numpy())


run_script(main, sys.argv[1])
"""


def test_global_norm_under_tensor_parallelism_sums_shards_over_ranks_and_counts_replicas_once(tmp_path):
    worker = tmp_path / "tp_clip_worker.py"
    worker.write_text(TP_WORKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # on a CPU build this makes the launcher fall back to gloo
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(tmp_path / "log"), str(worker), str(tmp_path)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    logs = "\n".join(log.read_text(errors="replace") for log in sorted((tmp_path / "log").glob("workerlog.*")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    for rank in range(2):
        # sqrt(3^2 + 4^2 + 12^2); one rank alone would see sqrt(3^2 + 12^2) or sqrt(4^2 + 12^2)
        assert float(np.load(tmp_path / f"norm{rank}.npy")) == pytest.approx(13.0)
