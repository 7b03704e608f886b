"""EVA-CLIP family: registry, parameter counts, attention kernels, stochastic depth, recompute."""

import json
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddlemix import AutoConfig, AutoModel, list_models
from paddlemix.models import CLIPConfig, parameter_count
from paddlemix.models.clip import towers
from paddlemix.models.layers import scaled_dot_product_attention
from paddlemix.models.registry import OPEN_CLIP_EQUIVALENTS
from paddlemix.models.loss_registry import build_loss, training_loss

EVA_NAMES = sorted(name for name in OPEN_CLIP_EQUIVALENTS if name.startswith("paddlemix/EVA/"))

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_eva02(**vision_overrides) -> CLIPConfig:
    vision = {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 3, "mlp_ratio": 8 / 3,
              "no_ln_pre": True, "patch_bias": True, "proj_bias": True, "attn_bias": "qv", "norm_eps": 1e-6,
              "rope": True, "pt_hw_seq_len": 4, "naiveswiglu": True, "subln": True, "xattn": True}
    text = {"context_length": 8, "vocab_size": 40, "width": 32, "heads": 2, "layers": 2}
    return CLIPConfig.from_dict({"model_type": "evaclip", "embed_dim": 16,
                                 "vision_cfg": dict(vision, **vision_overrides), "text_cfg": text})


def tiny_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 38, (4, 8))
    ids[:, 0], ids[:, -1] = 38, 39
    return paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32")), paddle.to_tensor(ids)


def test_all_seven_eva_registry_names_resolve_offline():
    assert len(EVA_NAMES) == 7
    for name in EVA_NAMES:
        assert name in list_models()
        assert AutoConfig.from_pretrained(name).model_type == "evaclip"


@pytest.mark.parametrize("name", EVA_NAMES)
def test_eva_parameter_count_equals_open_clip_under_lazy_guard(name):
    counts = json.loads((FIXTURES / "eva_parameter_counts.json").read_text())
    with paddle.LazyGuard():
        model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    assert parameter_count(model) == counts[OPEN_CLIP_EQUIVALENTS[name]]["total"]
    assert not any(p._is_initialized() for p in model.parameters())


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "causal_mask"])
def test_fused_attention_kernel_and_fallback_give_the_same_result(with_mask):
    rng = np.random.default_rng(0)
    query, key, value = (paddle.to_tensor(rng.standard_normal((2, 7, 3, 8)).astype("float32")) for _ in range(3))
    mask = paddle.triu(paddle.full([7, 7], float("-inf")), diagonal=1) if with_mask else None
    fused = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, training=False)
    fallback = scaled_dot_product_attention(query, key, value, mask, fused=False)
    np.testing.assert_allclose(fallback.numpy(), fused.numpy(), rtol=0, atol=1e-5)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    paddle.seed(0)
    model = AutoModel.from_config(tiny_eva02(drop_path_rate=0.5))
    image, _ = tiny_batch()
    model.eval()
    first, second = model.encode_image(image).numpy(), model.encode_image(image).numpy()
    np.testing.assert_array_equal(first, second)
    model.train()
    assert not np.allclose(model.encode_image(image).numpy(), first)
    rates = [block.drop_path.drop_prob for block in model.visual.transformer.resblocks[1:]]
    assert rates == [0.25, 0.5]  # linear from 0 in the first block (which has none) to the rate


def test_patch_dropout_keeps_each_samples_own_rotary_positions(monkeypatch):
    """Each sample's kept tokens, run alone with the rotations of their own grid positions, give
    exactly what the batched training forward gives that sample."""
    paddle.seed(0)
    model = AutoModel.from_config(tiny_eva02(patch_dropout=0.5))
    model.train()
    visual = model.visual
    kept, outputs = [], []
    real_drop_patches = towers.drop_patches
    monkeypatch.setattr(towers, "drop_patches", lambda *args: kept.append(real_drop_patches(*args)) or kept[-1])
    hook = visual.transformer.register_forward_post_hook(lambda layer, inputs, output: outputs.append(output))
    image, ids = tiny_batch()
    loss = training_loss(build_loss(model.config), model(image=image, input_ids=ids))
    hook.remove()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())

    ((_, kept_tokens),), (batched,) = kept, outputs
    assert kept_tokens.shape[1] < visual.rope.shape[0]  # tokens were dropped, differently per sample
    assert len({tuple(row) for row in kept_tokens.numpy().tolist()}) == kept_tokens.shape[0]
    with paddle.no_grad():
        tokens = visual.conv1(image).flatten(2).transpose([0, 2, 1])
        cls = visual.class_embedding.expand([tokens.shape[0], 1, tokens.shape[-1]])
        tokens = paddle.concat([cls, tokens], axis=1) + visual.positional_embedding
        for sample, positions in enumerate(kept_tokens.numpy()):
            alone = tokens[sample:sample + 1, positions]
            rope = visual.rope[positions].unsqueeze(0)
            expected = visual.transformer(visual.ln_pre(alone), rope=rope)
            np.testing.assert_allclose(batched[sample:sample + 1].numpy(), expected.numpy(), rtol=0, atol=1e-5)
