"""SigLIP / SigLIP 2 towers: open_clip's checkpoints convert both ways and give open_clip's features
(fixtures made by tests/fixtures/make_siglip_fixtures.py with open_clip 3.3.0 and timm 1.0.29), the
registry configs are open_clip's architectures, and the tower options behave as open_clip's."""

import json
import math
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from paddlemix import AutoConfig, AutoModel
from paddlemix.models import CLIPConfig
from paddlemix.models.checkpoint_formats.export import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, open_clip_files
from paddlemix.models.clip.towers import drop_patches, resample_positional_embedding
from paddlemix.models.layers.mlp import Mlp
from paddlemix.models.layers.norm import LayerNorm
from paddlemix.tools.convert import export, main

from export_helpers import REFERENCE_PYTHON, check_exports, save_paddlemix_features

FIXTURES = Path(__file__).parent / "fixtures"
SIGLIP_FIXTURES = ("tiny_siglip", "tiny_siglip2")
TOLERANCE = 1e-4  # max abs difference of features, float32
REGISTRY_REFERENCE = json.loads((FIXTURES / "registry_reference.json").read_text())
SIGLIP_NAMES = sorted(name for name in REGISTRY_REFERENCE if name.startswith("paddlemix/SigLIP/"))
GELU_NAMES = {"none": "gelu", "tanh": "gelu_tanh"}  # torch's GELU(approximate=...) -> paddlemix's activation


def fixture_record(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def paddlemix_config(name: str) -> dict:
    """The paddlemix config of fixture `name`, written from the open_clip config and timm kwargs it records."""
    record = fixture_record(name)
    trunk, text = record["timm_vit_kwargs"], record["text_cfg"]
    vision_cfg = {"image_size": trunk["img_size"], "patch_size": trunk["patch_size"], "width": trunk["embed_dim"],
                  "layers": trunk["depth"], "head_width": trunk["embed_dim"] // trunk["num_heads"],
                  "mlp_ratio": trunk.get("mlp_ratio", 4.0), "class_token": trunk["class_token"],
                  "pool_type": "map", "proj_type": "none", "no_ln_pre": True, "patch_bias": True, "norm_eps": 1e-6}
    text_cfg = {key: text[key] for key in ("context_length", "vocab_size", "width", "heads", "layers",
                                           "no_causal_mask", "proj_bias", "pool_type")}
    text_cfg.update(mlp_ratio=text.get("mlp_ratio", 4.0), norm_eps=text["norm_kwargs"]["eps"],
                    gelu_approximate=text.get("act_kwargs", {}).get("approximate", "none"))
    return {"model_type": "clip", "embed_dim": record["embed_dim"], "init_logit_bias": record["init_logit_bias"],
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def converted(tmp_path: Path, name: str) -> Path:
    """Fixture `name`'s open_clip state dict, converted by `convert --source open_clip` into a model directory."""
    config = tmp_path / f"{name}.config.json"
    config.write_text(json.dumps(paddlemix_config(name)))
    output = tmp_path / name
    assert main(["--source", "open_clip", "--model", str(config), "--checkpoint", str(FIXTURES / f"{name}.npz"),
                 "--output", str(output)]) == 0
    return output


@pytest.mark.parametrize("name", SIGLIP_FIXTURES)
def test_converted_open_clip_siglip_checkpoint_gives_open_clips_features(name, tmp_path):
    model = AutoModel.from_pretrained(str(converted(tmp_path, name)))
    model.eval()
    reference = np.load(FIXTURES / f"{name}.io.npz")
    with paddle.no_grad():
        image_features = model.encode_image(paddle.to_tensor(reference["image"])).numpy()
        text_features = model.encode_text(paddle.to_tensor(reference["text"])).numpy()
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text_features, reference["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(model.logit_scale.numpy(), reference["logit_scale"].reshape([1]))
    np.testing.assert_array_equal(model.logit_bias.numpy(), reference["logit_bias"].reshape([1]))


@pytest.mark.parametrize("name", SIGLIP_FIXTURES)
def test_towers_use_the_layer_norm_epsilon_and_gelu_that_open_clip_built(name):
    built = fixture_record(name)["built"]
    model = AutoModel.from_config(CLIPConfig.from_dict(paddlemix_config(name)))
    for tower in ("visual", "text"):
        layer = getattr(model, tower)
        assert sorted({m._epsilon for m in layer.sublayers() if isinstance(m, LayerNorm)}) == \
            built[tower]["layer_norm_eps"], tower
        activations = {m.activation for m in layer.sublayers() if isinstance(m, Mlp)}
        assert activations == {GELU_NAMES[a] for a in built[tower]["gelu_approximate"]}, tower


@pytest.mark.parametrize("name", SIGLIP_FIXTURES)
def test_export_to_open_clip_gives_its_state_dict_and_config_back(name, tmp_path):
    output = tmp_path / "exported"
    export("open_clip", str(converted(tmp_path, name)), output)
    producers = dict(np.load(FIXTURES / f"{name}.npz"))
    exported = load_file(str(output / OPEN_CLIP_WEIGHTS))
    assert sorted(exported) == sorted(producers)
    for key, value in producers.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
        assert exported[key].shape == value.shape, key
    record, hub = fixture_record(name), json.loads((output / OPEN_CLIP_CONFIG).read_text())
    model_cfg = hub["model_cfg"]
    assert record["text_cfg"].items() <= model_cfg["text_cfg"].items()
    assert (model_cfg["embed_dim"], model_cfg["init_logit_bias"], model_cfg["custom_text"]) == (
        record["embed_dim"], record["init_logit_bias"], True)
    assert {k: model_cfg["vision_cfg"][k] for k in ("image_size", "timm_pool", "timm_proj")} == {
        k: record["vision_cfg"][k] for k in ("image_size", "timm_pool", "timm_proj")}
    # a tiny trunk no timm model has: exported with the VisionTransformer kwargs that rebuild it
    trunk = {"mlp_ratio": 4.0, **{k: v for k, v in record["timm_vit_kwargs"].items() if k != "num_classes"}}
    assert (hub["timm_model_builder"], hub["timm_model_kwargs"]) == ("vision_transformer", trunk)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_PYTHON.is_file(), reason="needs the reference venv ($PPMIX_REFERENCE_PYTHON)")
def test_exports_load_in_open_clip_and_give_paddlemix_features(tmp_path):
    directories = []
    for name in SIGLIP_FIXTURES:
        model_dir, directory = converted(tmp_path, name), tmp_path / f"{name}-open_clip"
        export("open_clip", str(model_dir), directory)
        model = AutoModel.from_pretrained(str(model_dir))
        model.eval()
        save_paddlemix_features(model, np.load(FIXTURES / f"{name}.io.npz"), directory)
        directories.append(directory)
    assert len(check_exports(directories)) == len(SIGLIP_FIXTURES)


@pytest.mark.parametrize("name", SIGLIP_NAMES)
def test_registry_siglip_exports_as_open_clips_own_config_of_the_model(name):
    reference = REGISTRY_REFERENCE[name]["model_cfg"]
    model_cfg = open_clip_files(AutoConfig.from_pretrained(name), {})[OPEN_CLIP_CONFIG]["model_cfg"]
    assert model_cfg["vision_cfg"] == reference["vision_cfg"]  # timm's SigLIP trunk by name, 'map' pool, no proj
    assert reference["text_cfg"].items() <= model_cfg["text_cfg"].items()
    top = ("embed_dim", "init_logit_bias", "custom_text")
    assert {k: model_cfg[k] for k in top} == {k: reference[k] for k in top}


@pytest.mark.parametrize("name", SIGLIP_NAMES)
def test_registry_siglip_configs_train_with_the_sigmoid_loss_and_siglip_preprocessing(name):
    config = AutoConfig.from_pretrained(name)
    assert (config.model_type, config.loss, config.init_logit_bias) == ("clip", "siglip", -10)
    assert math.isclose(config.init_logit_scale, math.log(10))
    preprocess = config.preprocess_cfg
    assert (preprocess.mean, preprocess.std, preprocess.interpolation, preprocess.resize_mode) == (
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "squash")
    assert config.text_cfg.tokenizer == ("siglip2" if name.endswith("SigLIP2") else "siglip")


def text_states(no_causal_mask: bool, input_ids: paddle.Tensor) -> np.ndarray:
    paddle.seed(0)
    config = CLIPConfig.from_dict({"embed_dim": 16, "text_cfg": {
        "context_length": 6, "vocab_size": 20, "width": 16, "heads": 2, "layers": 2, "pool_type": "last",
        "no_causal_mask": no_causal_mask}})
    tower = AutoModel.from_config(config).text
    tower.eval()
    with paddle.no_grad():
        return tower.forward_with_tokens(input_ids)[1].numpy()


@pytest.mark.parametrize("no_causal_mask", [True, False], ids=["bidirectional", "causal"])
def test_only_a_bidirectional_text_tower_lets_the_first_token_see_the_last(no_causal_mask):
    ids = paddle.to_tensor([[3, 5, 7, 9, 11, 13]])
    changed = paddle.to_tensor([[3, 5, 7, 9, 11, 0]])  # only the last token differs (here: padding)
    first, second = text_states(no_causal_mask, ids), text_states(no_causal_mask, changed)
    if no_causal_mask:
        assert np.abs(first[0, 0] - second[0, 0]).max() > 1e-3
    else:
        np.testing.assert_allclose(first[0, :-1], second[0, :-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("vision, match", [
    (dict(class_token=False), r"pool_type 'tok' pools the class token"),
    (dict(proj_type="none"), r"pooled width 32 .* must equal embed_dim 16"),
    (dict(pool_type="map", final_ln_after_pool=True), r"'map' .* takes neither"),
], ids=["tok_without_class_token", "no_projection_to_another_width", "map_with_final_ln_after_pool"])
def test_vision_options_that_cannot_work_together_are_refused_when_the_tower_is_built(vision, match):
    config = CLIPConfig.from_dict({"embed_dim": 16, "vision_cfg": dict(
        {"image_size": 16, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1}, **vision)})
    with pytest.raises(ValueError, match=match):
        AutoModel.from_config(config)


def test_position_embedding_without_a_class_token_resamples_the_grid_alone():
    grid = np.random.default_rng(0).standard_normal((16, 8)).astype("float32")  # 4x4 patches, no class token
    with_class = np.concatenate([np.full((1, 8), 7.0, "float32"), grid])
    resampled = resample_positional_embedding(grid, 36, prefix_tokens=0)
    assert resampled.shape == (36, 8)
    np.testing.assert_array_equal(resampled, resample_positional_embedding(with_class, 37)[1:])


def test_patch_dropout_without_a_class_token_keeps_the_fraction_of_all_tokens():
    tokens = paddle.arange(2 * 16, dtype="float32").reshape([2, 16, 1])
    kept, indices = drop_patches(tokens, 0.5, prefix_tokens=0)
    assert kept.shape == [2, 8, 1]
    for row in indices.numpy():
        assert len(set(row)) == 8 and row.min() >= 0 and row.max() < 16
    np.testing.assert_array_equal(kept.numpy()[:, :, 0], indices.numpy() + np.array([[0], [16]]))


def test_an_open_clip_siglip_logit_scale_above_ln_100_is_kept_not_clamped(tmp_path):
    """open_clip's forward does not clamp the scale, and trained SigLIPs sit above ln 100 (~4.76): the
    converted model must give open_clip's exp(logit_scale), not paddlemix's default ceiling of 100."""
    state = dict(np.load(FIXTURES / "tiny_siglip.npz"))
    state["logit_scale"] = np.array(math.log(117.0), dtype="float32")
    checkpoint = tmp_path / "above_ln_100.npz"
    np.savez(checkpoint, **state)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(paddlemix_config("tiny_siglip")))
    assert main(["--source", "open_clip", "--model", str(config), "--checkpoint", str(checkpoint),
                 "--output", str(tmp_path / "out")]) == 0
    model = AutoModel.from_pretrained(str(tmp_path / "out"))
    assert float(model.scale()) == pytest.approx(117.0, rel=1e-5)
