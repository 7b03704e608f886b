"""CLIP family: registry, parameter counts, lazy construction, save/load, recompute."""

import urllib.error

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoModel, list_models
from paddlemix.external_ops import SWITCH
from paddlemix.models import CLIPConfig, UnknownModelError, parameter_count
from paddlemix.models import hub
from paddlemix.models.configuration import TextConfig, VisionConfig
from paddlemix.models.loss_registry import build_loss, training_loss

from test_eva_model import tiny_eva02

# open_clip 3.3.0: sum(p.numel() for p in open_clip.create_model(name).parameters())
OPEN_CLIP_PARAMETER_COUNTS = {
    "paddlemix/CLIP/ViT-B-32": 151_277_313,
    "paddlemix/CLIP/ViT-B-16": 149_620_737,
    "paddlemix/CLIP/ViT-L-14": 427_616_513,
    "paddlemix/CLIP/ViT-L-14-336": 427_944_193,
}


def tiny_config(**overrides) -> CLIPConfig:
    vision = VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=2)
    text = TextConfig(context_length=12, vocab_size=64, width=32, heads=2, layers=2)
    return CLIPConfig(embed_dim=16, vision_cfg=vision, text_cfg=text, **overrides)


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    image = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32"))
    ids = rng.integers(1, 62, (4, 12))
    ids[:, 0], ids[np.arange(4), [3, 5, 11, 8]] = 62, 63
    return image, paddle.to_tensor(ids.astype("int64"))


def test_every_clip_registry_name_resolves_offline():
    for name in OPEN_CLIP_PARAMETER_COUNTS:
        assert name in list_models()
        config = AutoConfig.from_pretrained(name)
        assert config.model_type == "clip" and config.name == name


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_PARAMETER_COUNTS))
def test_parameter_count_equals_open_clip_under_lazy_guard(name):
    with paddle.LazyGuard():
        model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    assert parameter_count(model) == OPEN_CLIP_PARAMETER_COUNTS[name]
    assert not any(p._is_initialized() for p in model.parameters()), "LazyGuard must not allocate parameters"


def test_unknown_name_lists_closest_registry_names():
    with pytest.raises(UnknownModelError, match="paddlemix/CLIP/ViT-B-32"):
        AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-31")
    with pytest.raises(UnknownModelError, match="paddlemix/CLIP/ViT-L-14"):
        AutoModel.from_pretrained("ViT-L-14")


def test_from_pretrained_offline_says_where_to_put_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMIX_HOME", str(tmp_path))

    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    name = "paddlemix/CLIP/CLIP-ViT-B-32-laion2B-s34B-b79K"  # published by PaddleMIX: downloaded when absent
    with pytest.raises(hub.ModelFilesNotFoundError) as info:
        AutoModel.from_pretrained(name)
    message = str(info.value)
    assert str(tmp_path / "models" / name) in message
    assert "paddlemix.tools.convert" in message
    assert list((tmp_path / "models" / name).iterdir()) == [], "no partial download left"


def test_save_pretrained_then_from_pretrained_gives_identical_outputs(tmp_path):
    paddle.seed(0)
    model = AutoModel.from_config(tiny_config(quick_gelu=True))
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(str(tmp_path))
    image, ids = tiny_batch()
    np.testing.assert_array_equal(model.encode_image(image).numpy(), loaded.encode_image(image).numpy())
    np.testing.assert_array_equal(model.encode_text(ids).numpy(), loaded.encode_text(ids).numpy())
    assert loaded.config == model.config


def test_forward_returns_normalised_features_scale_and_loss():
    paddle.seed(0)
    model = AutoModel.from_config(tiny_config())
    image, ids = tiny_batch()
    out = model(image=image, input_ids=ids)
    np.testing.assert_allclose(np.linalg.norm(out["image_features"].numpy(), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_features"].numpy(), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(out["logit_scale"]), 1 / 0.07, rtol=1e-5)
    logits = float(out["logit_scale"]) * out["image_features"].numpy() @ out["text_features"].numpy().T

    def cross_entropy(rows):
        rows = rows - rows.max(axis=1, keepdims=True)
        return -np.mean(np.diag(rows) - np.log(np.exp(rows).sum(axis=1)))

    expected = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    np.testing.assert_allclose(float(training_loss(build_loss(model.config), out)), expected, rtol=1e-5)


def test_logit_scale_is_clamped_to_ln_100():
    model = AutoModel.from_config(tiny_config())
    model.logit_scale.set_value(paddle.to_tensor([7.0]))
    np.testing.assert_allclose(float(model.scale()), 100.0, rtol=1e-5)


def gradients_without_and_with_recompute(config, image, ids):
    """Every parameter's gradient of one training loss, from a fresh model (seed 0) each way."""
    grads = []
    for recompute in (False, True):
        paddle.seed(0)
        model = AutoModel.from_config(config)
        model.train()
        model.set_recompute(recompute)
        training_loss(build_loss(config), model(image=image, input_ids=ids)).backward()
        grads.append({name: p.grad.numpy() for name, p in model.named_parameters()})
    return grads


@pytest.mark.parametrize("family", ["clip", "evaclip"])
def test_recompute_gives_the_same_gradients(family, monkeypatch):
    """Paddle's ops in both runs (blocks under recompute always use them), so the two must agree exactly."""
    monkeypatch.setenv(SWITCH, "0")
    image, ids = tiny_batch()
    config = tiny_config()
    if family == "evaclip":  # the tiny CLIP's text tower with an EVA-02 image tower
        config.vision_cfg, config.model_type = tiny_eva02(image_size=32, layers=2).vision_cfg, "evaclip"
    grads = gradients_without_and_with_recompute(config, image, ids)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_recompute_with_the_fused_ops_elsewhere_trains_like_no_recompute():
    """Blocks under recompute run Paddle's ops (custom ops do not take its saved-tensor hooks); the
    layers outside them keep the fused ops: the gradients agree within float32 kernel differences."""
    grads = gradients_without_and_with_recompute(tiny_config(), *tiny_batch())
    for name in grads[0]:
        scale = max(1e-3, float(np.abs(grads[0][name]).max()))
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=0, atol=1e-4 * scale, err_msg=name)


def test_text_longer_than_context_length_is_refused():
    model = AutoModel.from_config(tiny_config())
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(paddle.ones([1, 13], dtype="int64"))


def test_config_with_a_misspelled_key_names_the_closest_key():
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig.from_dict({"vision_cfg": {"patch_sise": 16}})
