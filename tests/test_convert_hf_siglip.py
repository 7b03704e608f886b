"""SigLIP from transformers and timm: `convert --source hf` reads a SiglipModel folder (architecture from
its config.json) and gives transformers' features and logits, `convert --to hf` writes the folder back,
and `convert --source timm` fills a SigLIP model's image tower from a bare timm ViT state dict and gives
timm's pooled features (fixtures saved by transformers 4.57.6 and timm 1.0.29 themselves:
tests/fixtures/make_hf_siglip_fixtures.py)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix import AutoModel
from paddlemix.models import CLIPConfig
from paddlemix.models.checkpoint_formats.export import ExportRefused, export_files
from paddlemix.models.state_dict import StateDictMismatchError
from paddlemix.tools.convert import convert, export, main

FIXTURES = Path(__file__).parent / "fixtures"
HF_FOLDER = FIXTURES / "hf_siglip"
TIMM_CHECKPOINT = FIXTURES / "timm_siglip_vit.safetensors"
TOLERANCE = 1e-4  # max abs difference of features, float32
LOGIT_TOLERANCE = 1e-4 * 117  # the logits are the features' cosines times exp(logit_scale) = 117


def imported(tmp_path: Path, folder: Path = HF_FOLDER) -> Path:
    output = tmp_path / f"{folder.name}-paddlemix"
    assert main(["--source", "hf", "--checkpoint", str(folder), "--output", str(output)]) == 0
    return output


def edited_folder(tmp_path: Path, edit=None, weights=None) -> Path:
    """A copy of the SiglipModel fixture whose config.json went through `edit(config)` and whose state
    dict through `weights(state)`."""
    folder = tmp_path / "hf_siglip-edited"
    shutil.copytree(HF_FOLDER, folder)
    if edit is not None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        state = load_file(str(folder / "model.safetensors"))
        weights(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_hf_siglip_checkpoint_gives_transformers_features_and_logits(tmp_path):
    model = AutoModel.from_pretrained(str(imported(tmp_path)))
    model.eval()
    reference = np.load(FIXTURES / "hf_siglip.io.npz")
    with paddle.no_grad():
        image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
        image_features = model.encode_image(image).numpy()
        text_features = model.encode_text(text).numpy()
        outputs = model(image=image, input_ids=text)
        logits = (outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
                  + outputs["logit_bias"]).numpy()
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text_features, reference["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(logits, reference["logits_per_image"], rtol=0, atol=LOGIT_TOLERANCE)
    np.testing.assert_array_equal(model.logit_scale.numpy(), reference["logit_scale"])
    np.testing.assert_array_equal(model.logit_bias.numpy(), reference["logit_bias"])


def test_hf_siglip_config_becomes_siglip_towers_each_with_its_own_gelu(tmp_path):
    config = json.loads((imported(tmp_path) / "config.json").read_text())
    vision, text = config["vision_cfg"], config["text_cfg"]
    assert (config["embed_dim"], config["loss"], config["init_logit_bias"], config["quick_gelu"]) == (32, "siglip", -10,
                                                                                                      False)
    assert {k: vision[k] for k in ("image_size", "patch_size", "width", "head_width", "layers", "mlp_ratio",
                                   "norm_eps", "gelu_approximate")} == dict(
        image_size=32, patch_size=8, width=32, head_width=8, layers=2, mlp_ratio=2.0, norm_eps=1e-6,
        gelu_approximate="tanh")  # hidden_act gelu_pytorch_tanh
    assert {k: vision[k] for k in ("class_token", "pool_type", "proj_type", "no_ln_pre", "patch_bias")} == dict(
        class_token=False, pool_type="map", proj_type="none", no_ln_pre=True, patch_bias=True)
    assert {k: text[k] for k in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_eps",
                                 "gelu_approximate")} == dict(
        context_length=12, vocab_size=64, width=24, heads=2, layers=2, mlp_ratio=2.0, norm_eps=1e-6,
        gelu_approximate="none")  # hidden_act gelu
    assert {k: text[k] for k in ("no_causal_mask", "pool_type", "proj_bias")} == dict(
        no_causal_mask=True, pool_type="last", proj_bias=True)


def test_hf_siglip_preprocessor_is_read_and_resizes_without_crop(tmp_path):
    preprocess = json.loads((imported(tmp_path) / "config.json").read_text())["preprocess_cfg"]
    assert (preprocess["mean"], preprocess["std"], preprocess["interpolation"], preprocess["resize_mode"]) == (
        [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], "bilinear", "squash")


def test_hf_siglip_without_preprocessor_gets_siglip_image_processors_defaults(tmp_path):
    folder = edited_folder(tmp_path)
    (folder / "preprocessor_config.json").unlink()
    preprocess = json.loads((imported(tmp_path, folder) / "config.json").read_text())["preprocess_cfg"]
    assert (preprocess["mean"], preprocess["std"], preprocess["interpolation"], preprocess["resize_mode"]) == (
        [0.5] * 3, [0.5] * 3, "bicubic", "squash")


@pytest.mark.parametrize("stored, ceiling", [(math.log(117.0), math.log(117.0)), (math.log(50.0), math.log(100.0))],
                         ids=["above_ln_100", "below_ln_100"])
def test_max_logit_scale_is_raised_to_an_unclamped_siglip_logit_scale_only(tmp_path, stored, ceiling):
    folder = edited_folder(tmp_path, weights=lambda state: state.update(
        logit_scale=np.array([stored], dtype="float32")))
    config = json.loads((imported(tmp_path, folder) / "config.json").read_text())
    assert math.isclose(config["max_logit_scale"], ceiling, rel_tol=1e-6)


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.update(model_type="siglip2"), r"Siglip2Model.*variable-resolution"),
    (lambda c: c["vision_config"].update(hidden_act="quick_gelu"), r"vision_config\.hidden_act 'quick_gelu'"),
    (lambda c: c["text_config"].update(projection_size=16), r"projection_size 16 differs from .*hidden_size 32"),
    (lambda c: c["vision_config"].update(vision_use_head=False), r"vision_use_head false"),
    (lambda c: c.update(model_type="blip"), r"model_type 'blip'"),
], ids=["siglip2_naflex", "activation", "projection_width", "no_head", "another_model"])
def test_hf_config_of_another_model_or_one_siglip_cannot_express_is_refused_with_the_reason(tmp_path, edit, reason):
    folder = edited_folder(tmp_path, edit)
    with pytest.raises(ValueError, match=reason):
        convert("hf", None, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_folder_without_config_is_refused(tmp_path):
    folder = edited_folder(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert("hf", None, folder, tmp_path / "out")


def test_export_to_hf_gives_the_siglip_folder_back(tmp_path):
    output = tmp_path / "exported"
    model_dir = imported(tmp_path)
    export("hf", str(model_dir), output)
    producers, exported = load_file(str(HF_FOLDER / "model.safetensors")), load_file(str(output / "model.safetensors"))
    assert sorted(exported) == sorted(producers)
    for key, value in producers.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
        assert exported[key].shape == value.shape, key
    hf_config = json.loads((output / "config.json").read_text())
    assert hf_config["model_type"] == "siglip"
    for tower in ("text_config", "vision_config"):
        written = json.loads((HF_FOLDER / "config.json").read_text())[tower]
        assert hf_config[tower].items() <= written.items(), tower
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert (processor["image_processor_type"], processor["size"], processor["resample"]) == (
        "SiglipImageProcessor", {"height": 32, "width": 32}, 2)
    # and back again: the same paddlemix model
    assert json.loads((imported(tmp_path, output) / "config.json").read_text()) == {
        **json.loads((model_dir / "config.json").read_text()), "name": "exported"}


def test_export_to_hf_refuses_a_siglip_model_siglipmodel_cannot_express():
    config = CLIPConfig.from_dict({"embed_dim": 16, "vision_cfg": {
        "image_size": 16, "patch_size": 8, "width": 16, "head_width": 8, "layers": 1, "class_token": False,
        "pool_type": "map", "proj_type": "none"}, "text_cfg": {"width": 16, "heads": 2, "layers": 1,
                                                                "pool_type": "last", "proj_bias": True}})
    with pytest.raises(ExportRefused, match=r"SiglipModel cannot express .*no_ln_pre=False.*no_causal_mask=False"):
        export_files("hf", config, {})


def test_export_to_open_clip_refuses_the_tanh_gelu_of_siglipmodels_image_tower(tmp_path):
    with pytest.raises(ExportRefused, match=r"vision_cfg\.gelu_approximate='tanh'"):  # timm's SigLIP ViT: exact GELU
        export("open_clip", str(imported(tmp_path)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def timm_model_config(tmp_path: Path) -> Path:
    """A paddlemix SigLIP config whose image tower is the fixture's tiny timm ViT; a small text tower."""
    trunk = json.loads((FIXTURES / "timm_siglip_vit.json").read_text())["kwargs"]
    config = {"model_type": "clip", "embed_dim": trunk["embed_dim"], "init_logit_bias": -10, "loss": "siglip",
              "vision_cfg": {"image_size": trunk["img_size"], "patch_size": trunk["patch_size"],
                             "width": trunk["embed_dim"], "layers": trunk["depth"],
                             "head_width": trunk["embed_dim"] // trunk["num_heads"], "mlp_ratio": trunk["mlp_ratio"],
                             "class_token": False, "pool_type": "map", "proj_type": "none", "no_ln_pre": True,
                             "patch_bias": True, "norm_eps": 1e-6},
              "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1,
                           "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_eps": 1e-6}}
    path = tmp_path / "siglip_tiny.json"
    path.write_text(json.dumps(config))
    return path


def test_timm_siglip_vit_fills_the_image_tower_and_gives_timms_pooled_features(tmp_path, caplog):
    output = tmp_path / "from-timm"
    with caplog.at_level("WARNING", logger="paddlemix"):
        assert main(["--source", "timm", "--model", str(timm_model_config(tmp_path)), "--checkpoint",
                     str(TIMM_CHECKPOINT), "--output", str(output)]) == 0
    assert "image tower only: logit_bias, logit_scale, text keep their fresh initialisation" in caplog.text
    model = AutoModel.from_pretrained(str(output))
    model.eval()
    reference = np.load(FIXTURES / "timm_siglip_vit.io.npz")
    with paddle.no_grad():
        image_features = model.encode_image(paddle.to_tensor(reference["image"])).numpy()
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(model.logit_bias.numpy(), [-10.0])  # the config's initial value


def test_timm_source_refuses_a_checkpoint_of_another_tower_and_writes_nothing(tmp_path):
    open_clip_siglip = tmp_path / "open_clip_siglip.safetensors"  # a whole model's keys, not a bare trunk's
    save_file({k: np.ascontiguousarray(v) for k, v in np.load(FIXTURES / "tiny_siglip.npz").items()},
              str(open_clip_siglip))
    with pytest.raises(StateDictMismatchError, match=r"missing .*visual\.attn_pool\.latent"):
        convert("timm", str(timm_model_config(tmp_path)), open_clip_siglip, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_timm_source_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        convert("timm", str(timm_model_config(tmp_path)), tmp_path / "absent.safetensors", tmp_path / "out")
