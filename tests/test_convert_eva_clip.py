"""EVA-CLIP checkpoint import: open_clip's timm-trunk checkpoints and the EVA-CLIP repository's
checkpoints become the same paddlemix model, whose features equal open_clip's (fixtures made by
tests/fixtures/make_eva_fixtures.py from open_clip 3.3.0 + timm 1.0.29)."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models import CLIPConfig
from paddlemix.models.layers import rope_sin_cos
from paddlemix.models.clip.towers import resample_positional_embedding
from paddlemix.tools.convert import convert, main
from paddlemix.models.loss_registry import build_loss, training_loss

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-4  # max abs difference, float32

TEXT = {"context_length": 12, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2, "xattn": True}
EVA = {"no_ln_pre": True, "patch_bias": True, "proj_bias": True, "attn_bias": "qv", "norm_eps": 1e-6,
       "width": 32, "head_width": 16, "layers": 2, "patch_size": 8, "xattn": True}
# The paddlemix configs of the fixture models (their timm kwargs are in tests/fixtures/<name>.json).
CONFIGS = {
    # EVA02: rope interpolated from a 4x4 to the 6x6 grid (as 224 -> 336), SwiGLU, sub-LN, q/v biases
    "tiny_eva02": dict(EVA, image_size=48, mlp_ratio=8 / 3, rope=True, pt_hw_seq_len=4, intp_freq=True,
                       naiveswiglu=True, subln=True),
    # EVA01: fused qkv with q/v biases, GELU MLP, layer scale
    "tiny_eva01": dict(EVA, image_size=32, mlp_ratio=4.0, ls_init_value=0.1),
    # EVA02-CLIP-bigE style post-norm blocks, here with mean pooling + fc_norm
    "tiny_eva_postnorm": dict(EVA, image_size=32, mlp_ratio=3.0, postnorm=True, pool_type="avg",
                              final_ln_after_pool=True),
}
CHECKPOINTS = {"open_clip": "{name}.open_clip.safetensors", "eva_clip": "{name}.eva_clip.npz"}


def write_config(tmp_path, name, **vision_overrides) -> Path:
    config = {"model_type": "evaclip", "embed_dim": 16, "vision_cfg": dict(CONFIGS[name], **vision_overrides),
              "text_cfg": TEXT}
    path = tmp_path / f"{name}.paddlemix.json"
    path.write_text(json.dumps(config))
    return path


def converted(tmp_path, name, source) -> Path:
    output = tmp_path / f"{name}-{source}"
    checkpoint = FIXTURES / CHECKPOINTS[source].format(name=name)
    assert main(["--source", source, "--model", str(write_config(tmp_path, name)),
                 "--checkpoint", str(checkpoint), "--output", str(output)]) == 0
    return output


@pytest.mark.parametrize("source", sorted(CHECKPOINTS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_converted_eva_checkpoint_matches_open_clip_features(name, source, tmp_path):
    model = AutoModel.from_pretrained(str(converted(tmp_path, name, source)))
    reference = np.load(FIXTURES / f"{name}.io.npz")
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    with paddle.no_grad():
        image_features = model.encode_image(image).numpy()
        text_features = model.encode_text(text).numpy()
        loss = float(training_loss(build_loss(model.config), model(image=image, input_ids=text)))
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text_features, reference["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(loss, reference["loss"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_both_eva_checkpoint_layouts_give_identical_paddlemix_weights(name, tmp_path):
    from_open_clip = paddle.load(str(converted(tmp_path, name, "open_clip") / "model_state.pdparams"))
    from_eva_clip = paddle.load(str(converted(tmp_path, name, "eva_clip") / "model_state.pdparams"))
    assert from_open_clip.keys() == from_eva_clip.keys()
    for key in from_open_clip:
        np.testing.assert_array_equal(from_open_clip[key].numpy(), from_eva_clip[key].numpy(), err_msg=key)


def test_rope_equals_timm_rope_interpolated_to_the_larger_grid():
    reference = np.load(FIXTURES / "tiny_eva02.io.npz")
    sin, cos = np.split(rope_sin_cos(head_dim=16, grid=(6, 6), pt_seq_len=4, intp_freq=True), 2, axis=-1)
    np.testing.assert_allclose(sin, reference["rope_sin"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(cos, reference["rope_cos"], rtol=0, atol=1e-6)


def test_position_embedding_resampling_matches_eva_clip_bicubic():
    reference = np.load(FIXTURES / "eva_pos_embed_resample.npz")  # timm resample_abs_pos_embed, 4x4 -> 6x6
    resampled = resample_positional_embedding(reference["pos_embed"][0], 1 + 6 * 6)
    np.testing.assert_allclose(resampled, reference["antialias_false"][0], rtol=0, atol=1e-5)


def test_converting_into_a_larger_image_size_resamples_the_position_embedding(tmp_path, caplog):
    output = tmp_path / "eva02-64px"
    convert("eva_clip", str(write_config(tmp_path, "tiny_eva02", image_size=64)),
            FIXTURES / "tiny_eva02.eva_clip.npz", output)
    assert "resampled (bicubic)" in caplog.text
    state = paddle.load(str(output / "model_state.pdparams"))
    original = np.load(FIXTURES / "tiny_eva02.eva_clip.npz")["visual.pos_embed"][0]
    np.testing.assert_allclose(state["visual.positional_embedding"].numpy(),
                               resample_positional_embedding(original, 1 + 8 * 8), rtol=0, atol=1e-6)


def paddlemix_layout(eva_clip_state: dict) -> dict:
    """The EVA-CLIP-layout fixture re-expressed in PaddleMIX's EVA-CLIP layout (paddlemix/models/clip
    in PaddleMIX): Paddle [in, out] Linear weights, q/k/v as separate projections in both towers
    (vision q/v biases as q_proj.bias / v_proj.bias), logit_scale of shape [1]."""
    out = {}
    for key, value in eva_clip_state.items():
        if key.endswith((".in_proj_weight", ".in_proj_bias", ".attn.qkv.weight")):
            block = key[: key.rindex(".attn.")] + ".attn"
            kind = "bias" if key.endswith("bias") else "weight"
            for name, part in zip("qkv", np.split(value, 3, axis=0)):
                out[f"{block}.{name}_proj.{kind}"] = part.T if kind == "weight" else part
        elif key.endswith((".attn.q_bias", ".attn.v_bias")):
            out[key.replace("_bias", "_proj.bias")] = value
        elif key.endswith(".weight") and value.ndim == 2 and key != "text.token_embedding.weight":
            out[key] = value.T
        else:
            out[key] = value.reshape([1]) if key == "logit_scale" else value
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paddlemix_layout_converts_to_the_same_weights(name, tmp_path):
    eva_clip_state = dict(np.load(FIXTURES / f"{name}.eva_clip.npz"))
    checkpoint = tmp_path / f"{name}.paddlemix.npz"
    np.savez(checkpoint, **paddlemix_layout(eva_clip_state))
    output = tmp_path / f"{name}-paddlemix"
    convert("paddlemix", str(write_config(tmp_path, name)), checkpoint, output)
    expected = paddle.load(str(converted(tmp_path, name, "eva_clip") / "model_state.pdparams"))
    got = paddle.load(str(output / "model_state.pdparams"))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def test_from_pretrained_converts_a_downloaded_paddlemix_layout_file(tmp_path, monkeypatch):
    """Registry weights come from PaddleMIX's community files, in PaddleMIX's layout."""
    eva_clip_state = dict(np.load(FIXTURES / "tiny_eva02.eva_clip.npz"))
    community = tmp_path / "community.pdparams"
    paddle.save({k: paddle.to_tensor(v) for k, v in paddlemix_layout(eva_clip_state).items()}, str(community))
    config = CLIPConfig.from_dict(json.loads(write_config(tmp_path, "tiny_eva02").read_text()))
    monkeypatch.setattr("paddlemix.auto.AutoConfig.from_pretrained", lambda name: config)
    monkeypatch.setattr("paddlemix.models.auto.cached_weights_file", lambda name: community)
    model = AutoModel.from_pretrained("paddlemix/EVA/tiny-for-test")
    reference = np.load(FIXTURES / "tiny_eva02.io.npz")
    features = model.encode_image(paddle.to_tensor(reference["image"])).numpy()
    np.testing.assert_allclose(features, reference["image_features"], rtol=0, atol=TOLERANCE)
