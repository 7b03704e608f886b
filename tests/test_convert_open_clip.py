"""open_clip checkpoint import: converted weights reproduce open_clip's features (fixtures made by
tests/fixtures/make_model_fixtures.py from open_clip 3.3.0)."""

from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from paddlemix import AutoModel
from paddlemix.models.state_dict import StateDictMismatchError
from paddlemix.tools.convert import convert, main
from paddlemix.models.loss_registry import build_loss, training_loss

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = {"tiny_clip": "tiny_clip.safetensors", "tiny_clip_options": "tiny_clip_options.npz"}
TOLERANCE = 1e-4  # max abs difference, float32


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_converted_open_clip_checkpoint_matches_open_clip_features(name, tmp_path):
    exit_code = main([
        "--source", "open_clip", "--model", str(FIXTURES / f"{name}.json"),
        "--checkpoint", str(FIXTURES / CHECKPOINTS[name]), "--output", str(tmp_path / name),
    ])
    assert exit_code == 0
    model = AutoModel.from_pretrained(str(tmp_path / name))
    reference = np.load(FIXTURES / f"{name}.io.npz")
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    with paddle.no_grad():
        image_features = model.encode_image(image).numpy()
        text_features = model.encode_text(text).numpy()
        out = model(image=image, input_ids=text)
    np.testing.assert_allclose(image_features, reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text_features, reference["text_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(float(out["logit_scale"]), reference["logit_scale"], rtol=1e-6)
    logits = float(out["logit_scale"]) * out["image_features"].numpy() @ out["text_features"].numpy().T
    np.testing.assert_allclose(logits, reference["logits_per_image"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(float(training_loss(build_loss(model.config), out)), reference["loss"], rtol=0,
                               atol=TOLERANCE)


def broken_checkpoint(tmp_path, edit):
    state = load_file(str(FIXTURES / "tiny_clip.safetensors"))
    edit(state)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("visual.ln_post.weight"), "missing (1): visual.ln_post.weight"),
        (lambda s: s.update({"visual.extra_head.weight": np.zeros(3, "float32")}), "unexpected (1): visual.extra_head.weight"),
        (lambda s: s.update({"ln_final.bias": np.zeros(31, "float32")}), "text.ln_final.bias: expected (32,), got (31,)"),
    ],
    ids=["missing", "unexpected", "wrong_shape"],
)
def test_conversion_stops_and_lists_offending_keys(tmp_path, edit, expected):
    checkpoint = broken_checkpoint(tmp_path, edit)
    with pytest.raises(StateDictMismatchError) as info:
        convert("open_clip", str(FIXTURES / "tiny_clip.json"), checkpoint, tmp_path / "out")
    assert expected in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing may be written on a mismatch"


def test_cli_reports_a_mismatch_with_exit_code_1(tmp_path, caplog):
    checkpoint = broken_checkpoint(tmp_path, lambda s: s.pop("logit_scale"))
    code = main(["--source", "open_clip", "--model", str(FIXTURES / "tiny_clip.json"),
                 "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")])
    assert code == 1
    assert "missing (1): logit_scale" in caplog.text


def test_checkpoint_of_unsupported_format_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        convert("open_clip", str(FIXTURES / "tiny_clip.json"), path, tmp_path / "out")
