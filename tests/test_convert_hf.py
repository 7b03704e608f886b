"""transformers CLIPModel import: `convert --source hf DIR` builds the architecture from the folder's
config.json, and the model's features equal transformers' get_image_features / get_text_features
(fixtures saved by transformers 4.57.6 itself: tests/fixtures/make_hf_fixtures.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.tools.convert import convert, main

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-4  # max abs difference, float32
NAMES = ["quick_gelu", "gelu"]


def imported(tmp_path, name) -> Path:
    output = tmp_path / f"{name}-paddlemix"
    assert main(["--source", "hf", "--checkpoint", str(FIXTURES / f"hf_{name}"), "--output", str(output)]) == 0
    return output


def edited_folder(tmp_path, name, edit) -> Path:
    """A copy of a fixture folder whose config.json went through `edit(config)`."""
    folder = tmp_path / f"hf_{name}-edited"
    shutil.copytree(FIXTURES / f"hf_{name}", folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_hf_checkpoint_gives_transformers_features(name, tmp_path):
    model = AutoModel.from_pretrained(str(imported(tmp_path, name)))
    reference = np.load(FIXTURES / f"hf_{name}.io.npz")
    with paddle.no_grad():
        image_features = model.encode_image(paddle.to_tensor(reference["image"])).numpy()
        text_features = model.encode_text(paddle.to_tensor(reference["text"])).numpy()
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text_features, reference["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(model.logit_scale.numpy().reshape([]), reference["logit_scale"])


def test_hf_config_becomes_the_paddlemix_architecture(tmp_path):
    config = json.loads((imported(tmp_path, "gelu") / "config.json").read_text())
    assert (config["embed_dim"], config["quick_gelu"], config["init_logit_scale"]) == (24, False, 3.0)
    assert {k: config["vision_cfg"][k] for k in ("image_size", "patch_size", "width", "head_width", "layers",
                                                 "mlp_ratio", "norm_eps")} == dict(
        image_size=48, patch_size=16, width=48, head_width=16, layers=2, mlp_ratio=2.0, norm_eps=1e-6)
    assert {k: config["text_cfg"][k] for k in ("context_length", "vocab_size", "width", "heads", "mlp_ratio")} == dict(
        context_length=77, vocab_size=64, width=32, heads=2, mlp_ratio=3.0)


def test_hf_preprocessor_mean_std_and_resampling_are_carried_over(tmp_path):
    folder = edited_folder(tmp_path, "gelu", lambda config: None)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0],
         "resample": 2}))
    convert("hf", None, folder, tmp_path / "out")
    preprocess = json.loads((tmp_path / "out" / "config.json").read_text())["preprocess_cfg"]
    assert (preprocess["mean"], preprocess["std"], preprocess["interpolation"]) == (
        [0.5, 0.5, 0.5], [0.25, 0.5, 1.0], "bilinear")


def test_hf_folder_with_only_a_torch_pickle_is_refused_without_reading_it(tmp_path):
    folder = edited_folder(tmp_path, "gelu", lambda config: None)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safe_serialization=True"):
        convert("hf", None, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["vision_config"].update(hidden_act="gelu_new"), r"vision_config\.hidden_act 'gelu_new'"),
    (lambda c: c["text_config"].update(hidden_act="quick_gelu"), r"one setting for both towers"),
    (lambda c: c["text_config"].update(layer_norm_eps=1e-6), r"text_config\.layer_norm_eps 1e-06"),
    (lambda c: c["text_config"].update(eos_token_id=5), r"eos_token_id 5"),
    (lambda c: c.update(model_type="align"), r"model_type 'align'"),
], ids=["activation", "mixed_activations", "text_eps", "eos_token_id", "not_clip"])
def test_hf_config_paddlemix_cannot_express_is_refused_with_the_reason(tmp_path, edit, reason):
    folder = edited_folder(tmp_path, "gelu", edit)
    with pytest.raises(ValueError, match=reason):
        convert("hf", None, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_source_refuses_a_model_flag(tmp_path):
    with pytest.raises(ValueError, match="leave --model out"):
        convert("hf", "paddlemix/CLIP/ViT-B-32", FIXTURES / "hf_gelu", tmp_path / "out")
