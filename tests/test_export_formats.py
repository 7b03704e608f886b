"""Export to transformers' CLIPModel folder and open_clip's hub layout (`convert --to hf|open_clip`):
the exported weights are the producers' own files again, bit for bit; ours -> format -> ours is
bit-identical; what a format cannot express is refused with the reason and nothing is written; and
(slow, reference venv) transformers / open_clip load the exports and give paddlemix's features."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models.checkpoint_formats.common import strip_wrappers
from paddlemix.models.checkpoint_formats.export import ExportRefused
from paddlemix.models.configuration import CLIPConfig
from paddlemix.tools.convert import export, main, read_checkpoint
from safetensors.numpy import load_file
from test_convert_eva_clip import CONFIGS as EVA_CONFIGS
from test_convert_eva_clip import write_config as write_eva_config

from export_helpers import REFERENCE_PYTHON, check_exports, save_paddlemix_features

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-4
# producer's file of each fixture model, and how it is imported: (source, --model, --checkpoint)
OPEN_CLIP_FIXTURES = {name: f"{name}.safetensors" for name in ("tiny_clip", "tiny_coca", "tiny_coca_options")}
OPEN_CLIP_FIXTURES.update(tiny_clip_options="tiny_clip_options.npz",
                          **{name: f"{name}.open_clip.safetensors" for name in EVA_CONFIGS})
HF_FIXTURES = {f"hf_{name}": f"hf_{name}/model.safetensors" for name in ("quick_gelu", "gelu")}
# every family/format pair that can express it
EXPRESSIBLE = [(name, "hf") for name in (*HF_FIXTURES, "tiny_clip")] + [
    (name, "open_clip") for name in (*HF_FIXTURES, *OPEN_CLIP_FIXTURES)]
EXPORTED_WEIGHTS = {"hf": "model.safetensors", "open_clip": "open_clip_model.safetensors"}


def paddlemix_model(tmp_path, name) -> Path:
    """The fixture model `name`, imported from its producer's file into a paddlemix model directory."""
    output = tmp_path / name
    if name in HF_FIXTURES:
        args = ["--source", "hf", "--checkpoint", str(FIXTURES / name)]
    else:
        model = write_eva_config(tmp_path, name) if name in EVA_CONFIGS else FIXTURES / f"{name}.json"
        args = ["--source", "open_clip", "--model", str(model), "--checkpoint", str(FIXTURES / OPEN_CLIP_FIXTURES[name])]
    assert main(args + ["--output", str(output)]) == 0
    return output


def exported(tmp_path, name, fmt) -> Path:
    output = tmp_path / f"{name}-{fmt}"
    assert main(["--to", fmt, "--model", str(paddlemix_model(tmp_path, name)), "--output", str(output)]) == 0
    return output


def reimported(tmp_path, name, fmt) -> Path:
    """ours -> fmt -> ours; open_clip's EVA config names a timm trunk, so EVA comes back with its own config."""
    export_dir, output = exported(tmp_path, name, fmt), tmp_path / f"{name}-{fmt}-back"
    if fmt == "hf":
        args = ["--source", "hf", "--checkpoint", str(export_dir)]
    else:
        model = tmp_path / name / "config.json" if name in EVA_CONFIGS else export_dir / "open_clip_config.json"
        args = ["--source", "open_clip", "--model", str(model), "--checkpoint", str(export_dir / EXPORTED_WEIGHTS[fmt])]
    assert main(args + ["--output", str(output)]) == 0
    return output


def assert_same_state(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


@pytest.mark.parametrize("name", sorted({**OPEN_CLIP_FIXTURES, **HF_FIXTURES}))
def test_export_to_its_producers_format_gives_the_producers_file_back_bit_for_bit(name, tmp_path):
    fmt = "hf" if name in HF_FIXTURES else "open_clip"
    producers = strip_wrappers(read_checkpoint(FIXTURES / {**OPEN_CLIP_FIXTURES, **HF_FIXTURES}[name]))
    assert_same_state(load_file(str(exported(tmp_path, name, fmt) / EXPORTED_WEIGHTS[fmt])), producers)


@pytest.mark.parametrize("name, fmt", EXPRESSIBLE)
def test_round_trip_through_a_format_is_bit_identical(name, fmt, tmp_path):
    before = paddle.load(str(paddlemix_model(tmp_path, name) / "model_state.pdparams"))
    after = paddle.load(str(reimported(tmp_path, name, fmt) / "model_state.pdparams"))
    assert_same_state({k: v.numpy() for k, v in after.items()}, {k: v.numpy() for k, v in before.items()})
    if not (fmt == "open_clip" and name in EVA_CONFIGS):  # the architecture comes back from the exported config
        config_before = json.loads((tmp_path / name / "config.json").read_text())
        config_after = json.loads((tmp_path / f"{name}-{fmt}-back" / "config.json").read_text())
        assert {**config_after, "name": None} == {**config_before, "name": None}



@pytest.mark.parametrize("name, fmt, reason", [
    ("tiny_eva02", "hf", r"evaclip model has no transformers CLIPModel form"),
    ("tiny_coca", "hf", r"coca model has no transformers CLIPModel form"),
    ("tiny_clip_options", "hf", r"vision_cfg\.ls_init_value=0\.1.*vision_cfg\.pool_type='avg'.*text_cfg\.proj_bias=True"),
])
def test_export_a_format_cannot_express_is_refused_with_the_reason_and_writes_nothing(name, fmt, reason, tmp_path):
    model = paddlemix_model(tmp_path, name)
    with pytest.raises(ExportRefused, match=reason):
        export(fmt, str(model), tmp_path / "out")
    assert main(["--to", fmt, "--model", str(model), "--output", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("vision, reason", [
    (dict(attn_bias="qkv"), r"attn_bias='qkv': timm's Eva has no key bias"),
    (dict(norm_eps=1e-5), r"norm_eps=1e-05: timm's Eva LayerNorms use 1e-06"),
    (dict(proj_bias=False), r"proj_bias=false"),
    (dict(naiveswiglu=True, subln=False), r"naiveswiglu without subln"),
], ids=["key_bias", "norm_eps", "no_head_bias", "swiglu_without_subln"])
def test_eva_option_timms_eva_cannot_take_is_refused_before_writing(vision, reason, tmp_path):
    config = write_eva_config(tmp_path, "tiny_eva02", **vision)
    model = tmp_path / "model"
    AutoModel.from_config(CLIPConfig.from_json_file(config)).save_pretrained(model)
    with pytest.raises(ExportRefused, match=reason):
        export("open_clip", str(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clip_with_eva_options_is_refused_by_open_clips_vision_transformer(tmp_path):
    config = json.loads((FIXTURES / "tiny_clip.json").read_text())
    config["vision_cfg"].update(rope=True, subln=True)
    model = tmp_path / "model"
    AutoModel.from_config(CLIPConfig.from_dict(dict(config, model_type="clip"))).save_pretrained(model)
    with pytest.raises(ExportRefused, match=r"vision_cfg\.rope=True.*vision_cfg\.subln=True"):
        export("open_clip", str(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def io_inputs(name):
    return np.load(FIXTURES / (f"{name}.io.npz"))


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_PYTHON.is_file(), reason="needs the reference venv ($PPMIX_REFERENCE_PYTHON)")
def test_exports_load_in_transformers_and_open_clip_with_paddlemix_features(tmp_path):
    directories = []
    for name, fmt in EXPRESSIBLE:
        directory = exported(tmp_path, name, fmt)
        save_paddlemix_features(AutoModel.from_pretrained(str(tmp_path / name)), io_inputs(name), directory)
        directories.append(directory)
    assert len(check_exports(directories)) == len(EXPRESSIBLE)
