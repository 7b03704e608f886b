"""CLIP with a pretrained-language-model text tower, from and to its producers: transformers'
VisionTextDualEncoderModel folders (`convert --source hf`) and open_clip checkpoints with an
HFTextEncoder (`convert --source open_clip`) give the producers' image and text features and logits,
for RoBERTa, XLM-RoBERTa and BERT text models; `--to hf|open_clip` gives the producers' files back bit
for bit, and (slow, reference venv) transformers and open_clip load the exports with paddlemix's
features. Fixtures: tests/fixtures/make_text_tower_fixtures.py."""

import json
import subprocess
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from safetensors.numpy import load_file

from paddlemix import AutoModel
from paddlemix.models.checkpoint_formats.export import ExportRefused
from paddlemix.tools.convert import convert, export, main
from test_export_formats import REFERENCE_PYTHON, assert_same_state

FIXTURES = Path(__file__).parent / "fixtures" / "text_towers"
FAMILIES = ["roberta", "xlm-roberta", "bert"]
TOLERANCE = 1e-4  # max abs difference, float32
TOKENIZER_FILES = {"roberta": ["merges.txt", "vocab.json"], "xlm-roberta": ["sentencepiece.bpe.model"],
                   "bert": ["vocab.txt"]}  # and each family's special_tokens_map.json, tokenizer_config.json
PRODUCERS_WEIGHTS = {"dual": "dual_{}/model.safetensors", "open_clip": "open_clip_{}.safetensors"}


def imported(tmp_path, producer: str, family: str) -> Path:
    """The fixture model of `producer` ('dual' or 'open_clip'), imported into a paddlemix model directory."""
    output = tmp_path / f"{producer}_{family}"
    if producer == "dual":
        args = ["--source", "hf", "--checkpoint", str(FIXTURES / f"dual_{family}")]
    else:
        args = ["--source", "open_clip", "--model", str(FIXTURES / f"open_clip_{family}.json"),
                "--checkpoint", str(FIXTURES / f"open_clip_{family}.safetensors")]
    assert main(args + ["--output", str(output)]) == 0
    return output


def exported(tmp_path, producer: str, family: str, fmt: str) -> Path:
    output = tmp_path / f"{producer}_{family}-{fmt}"
    assert main(["--to", fmt, "--model", str(imported(tmp_path, producer, family)), "--output", str(output)]) == 0
    return output


def features(directory: Path, io):
    """paddlemix's (image features, text features, logits per image) of the model in `directory`."""
    model = AutoModel.from_pretrained(str(directory))
    with paddle.no_grad():
        image = model.encode_image(paddle.to_tensor(io["image"]))
        text = model.encode_text(paddle.to_tensor(io["input_ids"]))
        logits = model.scale() * F.normalize(image, axis=-1) @ F.normalize(text, axis=-1).T
    return image.numpy(), text.numpy(), logits.numpy()


@pytest.mark.parametrize("producer", ["dual", "open_clip"])
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_gives_the_producers_features_and_logits(producer, family, tmp_path):
    io = np.load(FIXTURES / f"{producer}_{family}.io.npz")
    image, text, logits = features(imported(tmp_path, producer, family), io)
    np.testing.assert_allclose(image, io["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text, io["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(logits, io["logits_per_image"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family, quick_gelu, context_length", [("roberta", True, 22), ("xlm-roberta", False, 22),
                                                                ("bert", True, 24)])
def test_dual_encoder_config_becomes_a_pooler_output_text_tower(family, quick_gelu, context_length, tmp_path):
    config = json.loads((imported(tmp_path, "dual", family) / "config.json").read_text())
    assert (config["embed_dim"], config["quick_gelu"], config["init_logit_scale"]) == (16, quick_gelu, 2.6592)
    text = config["text_cfg"]
    assert {k: text[k] for k in ("kind", "encoder", "pooler_type", "proj_type", "proj_bias", "context_length")} == dict(
        kind="paddlenlp", encoder=family, pooler_type="pooler_output", proj_type="linear", proj_bias=False,
        context_length=context_length)  # RoBERTa's 24 positions less pad_token_id + 1
    # transformers leaves the values equal to its defaults out of a composite config.json
    written = json.loads((FIXTURES / f"dual_{family}" / "config.json").read_text())["text_config"]
    assert "pad_token_id" not in written and text["encoder_config"]["pad_token_id"] == (0 if family == "bert" else 1)
    assert {k: config["vision_cfg"][k] for k in ("image_size", "patch_size", "width", "layers", "head_width",
                                                 "mlp_ratio")} == dict(image_size=16, patch_size=8, width=32, layers=1,
                                                                       head_width=16, mlp_ratio=2.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_files_travel_with_the_weights(family, tmp_path):
    names = TOKENIZER_FILES[family] + ["special_tokens_map.json", "tokenizer_config.json"]
    for directory, source in ((imported(tmp_path, "dual", family), FIXTURES / f"dual_{family}"),
                              (exported(tmp_path, "dual", family, "hf"), FIXTURES / f"dual_{family}")):
        for name in names:
            assert (directory / name).read_bytes() == (source / name).read_bytes(), (directory, name)


@pytest.mark.parametrize("producer, fmt", [("dual", "hf"), ("open_clip", "open_clip")])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_to_its_producers_format_gives_the_producers_file_back_bit_for_bit(producer, fmt, family, tmp_path):
    weights = "model.safetensors" if fmt == "hf" else "open_clip_model.safetensors"
    assert_same_state(load_file(str(exported(tmp_path, producer, family, fmt) / weights)),
                      load_file(str(FIXTURES / PRODUCERS_WEIGHTS[producer].format(family))))


@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_round_trip_through_a_format_is_bit_identical(fmt, tmp_path):
    model = imported(tmp_path, "dual", "xlm-roberta")
    export_dir, back = exported(tmp_path, "dual", "xlm-roberta", fmt), tmp_path / "back"
    if fmt == "hf":
        args = ["--source", "hf", "--checkpoint", str(export_dir)]
    else:  # open_clip's config names the encoder, paddlemix's holds its config
        args = ["--source", "open_clip", "--model", str(model / "config.json"),
                "--checkpoint", str(export_dir / "open_clip_model.safetensors")]
    assert main(args + ["--output", str(back)]) == 0
    before, after = (paddle.load(str(d / "model_state.pdparams")) for d in (model, back))
    assert_same_state({k: v.numpy() for k, v in after.items()}, {k: v.numpy() for k, v in before.items()})
    config_before, config_after = (json.loads((d / "config.json").read_text()) for d in (model, back))
    assert {**config_after, "name": None} == {**config_before, "name": None}


def test_open_clip_export_names_its_hf_text_encoder(tmp_path):
    export_dir = exported(tmp_path, "open_clip", "roberta", "open_clip")
    text_cfg = json.loads((export_dir / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert text_cfg == dict(hf_model_name=".", hf_tokenizer_name=".", hf_model_pretrained=False,
                            hf_pooler_type="mean_pooler", hf_proj_type="mlp", context_length=16)
    encoder = json.loads((export_dir / "config.json").read_text())
    assert (encoder["model_type"], encoder["pad_token_id"]) == ("roberta", 1)


@pytest.mark.parametrize("producer, fmt, reason", [
    ("open_clip", "hf", r"pooler_type='mean'.*proj_type='mlp'"),  # roberta: mean pooling, MLP projection
], ids=["dual_encoder_needs_pooler_output_and_linear"])
def test_export_a_format_cannot_express_is_refused_and_writes_nothing(producer, fmt, reason, tmp_path):
    model = imported(tmp_path, producer, "roberta")
    with pytest.raises(ExportRefused, match=reason):
        export(fmt, str(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_clip_export_refuses_eos_pooling(tmp_path):
    model = imported(tmp_path, "open_clip", "bert")
    config = json.loads((model / "config.json").read_text())
    config["text_cfg"]["pooler_type"] = "eos"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportRefused, match=r"pooler_type='eos': open_clip's HF text poolers are mean, pooler_output, cls"):
        export("open_clip", str(model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["vision_config"].update(model_type="vit"), r"vision_config\.model_type 'vit'"),
    (lambda c: c["text_config"].update(model_type="gpt2"), r"text_config\.model_type 'gpt2'"),
    (lambda c: c["text_config"].update(hidden_act="gelu_new"), r"text_config: .*hidden_act 'gelu_new'"),
], ids=["vision_not_clip", "text_not_bert_family", "text_activation"])
def test_dual_encoder_paddlemix_cannot_express_is_refused_with_the_reason(edit, reason, tmp_path):
    folder = tmp_path / "dual"
    folder.mkdir()
    for item in (FIXTURES / "dual_roberta").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=reason):
        convert("hf", None, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_PYTHON.is_file(), reason="needs the reference venv ($PPMIX_REFERENCE_PYTHON)")
def test_exports_load_in_transformers_and_open_clip_with_paddlemix_features(tmp_path):
    directories = []
    for family in FAMILIES:
        for producer, fmt in (("dual", "hf"), ("dual", "open_clip"), ("open_clip", "open_clip")):
            directory = exported(tmp_path, producer, family, fmt)
            io = np.load(FIXTURES / f"{producer}_{family}.io.npz")
            image, text, _ = features(tmp_path / f"{producer}_{family}", io)
            np.savez(directory / "paddlemix_io.npz", image=io["image"], text=io["input_ids"], image_features=image,
                     text_features=text)
            directories.append(str(directory))
    result = subprocess.run([str(REFERENCE_PYTHON), str(FIXTURES.parent / "check_exports.py"), *directories],
                            capture_output=True, text=True)
    report = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print("\n".join(map(json.dumps, report)))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert len(report) == len(directories)
