"""--lock_image / --lock_text with unlocked layer counts leave trainable exactly what open_clip's
lock_image_tower / lock_text_tower do (tests/fixtures/make_lock_fixtures.py records open_clip's)."""

import json
from pathlib import Path

import numpy as np
import pytest

from paddlemix import AutoModel
from paddlemix.models.checkpoint_formats.common import paddle_to_torch_layout
from paddlemix.models.checkpoint_formats.open_clip import to_open_clip
from paddlemix.tools.convert import read_model_config

FIXTURES = Path(__file__).parent / "fixtures"
OPEN_CLIP = json.loads((FIXTURES / "lock_trainable.json").read_text())


def open_clip_names(model, trainable_only: bool):
    state = {name: np.zeros(param.shape, "float32") for name, param in model.named_parameters()
             if not (trainable_only and param.stop_gradient)}
    return sorted(to_open_clip(paddle_to_torch_layout(state), text_at_top=True))


def tower_of(open_clip_name: str) -> str:
    if open_clip_name == "logit_scale":
        return "model"
    return "visual" if open_clip_name.startswith("visual.") else "text"


@pytest.mark.parametrize("unlocked", range(6))
@pytest.mark.parametrize("tower", ["visual", "text"])
def test_locking_leaves_trainable_what_open_clip_leaves(tower, unlocked):
    model = AutoModel.from_config(read_model_config(str(FIXTURES / "tiny_clip.json")))
    getattr(model, tower).lock(unlocked)
    trainable = open_clip_names(model, trainable_only=True)
    other = [name for name in open_clip_names(model, False) if tower_of(name) != tower]
    assert [name for name in trainable if name not in other] == OPEN_CLIP[tower][str(unlocked)]
    assert set(other) <= set(trainable)  # the other tower and logit_scale stay trainable


def test_run_flags_lock_with_unlocked_layer_counts(tmp_path):
    from paddlemix.trainer.arguments import parse_arguments
    from paddlemix.trainer.run import build_model

    model_args, _, args = parse_arguments([
        "--model", str(FIXTURES / "tiny_clip.json"), "--output_dir", str(tmp_path), "--lock_text",
        "--lock_text_unlocked_layers", "2", "--lock_image", "--lock_image_unlocked_groups", "1"])
    model = build_model(model_args, args)
    trainable = [name for name, param in model.named_parameters() if not param.stop_gradient]
    assert sorted(trainable) == sorted(["logit_scale", "visual.proj", "text.ln_final.weight", "text.ln_final.bias",
                                        "text.text_projection"]
                                       + [n for n, _ in model.text.transformer.resblocks[1].named_parameters(
                                           prefix="text.transformer.resblocks.1")])
