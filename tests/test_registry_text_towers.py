"""Registry names whose text tower is a pretrained language model: open_clip's roberta-ViT-B-32,
xlm-roberta-base-ViT-B-32 and xlm-roberta-large-ViT-H-14, and transformers' CLIP-RoBERTa dual encoder
(the contrastive-image-text guide's model) have their producer's architecture, encoder config and
parameter count, and say how to convert their producer's checkpoints.

The producers' facts come from tests/fixtures/text_tower_registry_reference.json
(tests/fixtures/make_text_tower_registry_fixtures.py).
"""

import json
from pathlib import Path

import paddle
import pytest

from paddlemix import AutoConfig, AutoModel
from paddlemix.models import hub, parameter_count
from paddlemix.models.checkpoint_formats.hf_dual_encoder import dual_encoder_config_from_hf
from paddlemix.models.clip.paddlenlp_tower import HF_DEFAULTS
from paddlemix.models.registry import ARCHITECTURE_ONLY_NAMES, describe_models

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "text_tower_registry_reference.json").read_text())
NAMES = sorted(name for name in REFERENCE if not name.startswith("_"))
OPEN_CLIP_NAMES = [name for name in NAMES if "open_clip_model" in REFERENCE[name]]
CLIP_ROBERTA = "paddlemix/CLIP/clip-roberta"
# open_clip's hf_pooler_type -> paddlemix's pooler_type
POOLER_TYPES = {"mean_pooler": "mean", "cls_pooler": "pooler_output", "cls_last_hidden_state_pooler": "cls"}


def test_the_fixture_covers_three_open_clip_names_and_clip_roberta():
    assert OPEN_CLIP_NAMES == ["paddlemix/CLIP/roberta-ViT-B-32", "paddlemix/CLIP/xlm-roberta-base-ViT-B-32",
                               "paddlemix/CLIP/xlm-roberta-large-ViT-H-14"]
    assert NAMES == sorted(OPEN_CLIP_NAMES + [CLIP_ROBERTA])


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_the_producers(name):
    with paddle.LazyGuard():
        model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    assert parameter_count(model) == REFERENCE[name]["parameters"]
    assert not any(p._is_initialized() for p in model.parameters()), "LazyGuard must not allocate parameters"


@pytest.mark.parametrize("name", NAMES)
def test_encoder_config_is_the_hub_config_json_inline(name):
    text = AutoConfig.from_pretrained(name).text_cfg
    expected = REFERENCE[name]["encoder_config"]
    assert (text.kind, text.encoder, text.tokenizer) == ("paddlenlp", expected["model_type"], "hf")
    assert text.encoder_config == expected  # every key of the hub's file, nothing filled in


@pytest.mark.parametrize("name", OPEN_CLIP_NAMES)
def test_open_clip_names_have_open_clips_architecture(name):
    config, reference = AutoConfig.from_pretrained(name), REFERENCE[name]
    model_cfg = reference["model_cfg"]
    assert (config.embed_dim, config.quick_gelu) == (model_cfg["embed_dim"], model_cfg.get("quick_gelu", False))
    assert {key: getattr(config.vision_cfg, key) for key in model_cfg["vision_cfg"]} == model_cfg["vision_cfg"]
    text = config.text_cfg
    assert (text.pooler_type, text.proj_type, text.proj_bias, text.context_length) == (
        POOLER_TYPES[reference["hf_pooler_type"]], reference["hf_proj_type"], False, reference["context_length"])
    preprocess = config.preprocess_cfg
    assert [list(preprocess.mean), list(preprocess.std), preprocess.interpolation, preprocess.resize_mode,
            preprocess.fill_color] == [reference["preprocess_cfg"][key] for key in
                                       ("mean", "std", "interpolation", "resize_mode", "fill_color")]


def test_clip_roberta_is_what_convert_source_hf_makes_of_the_guides_folder():
    config = AutoConfig.from_pretrained(CLIP_ROBERTA)
    converted = dual_encoder_config_from_hf(REFERENCE[CLIP_ROBERTA]["hf_config"], where="fixture")
    assert (config.embed_dim, config.quick_gelu, config.init_logit_scale) == (512, True, 2.6592)
    assert config.vision_cfg == converted.vision_cfg
    assert config.preprocess_cfg == converted.preprocess_cfg  # OpenAI's: CLIPImageProcessor of clip-vit-base-patch32
    for key in ("embed_dim", "quick_gelu", "init_logit_scale", "max_logit_scale"):
        assert getattr(config, key) == getattr(converted, key), key
    text, converted_text = config.text_cfg, converted.text_cfg
    assert (text.pooler_type, text.proj_type, text.proj_bias, text.context_length) == (
        converted_text.pooler_type, converted_text.proj_type, converted_text.proj_bias, converted_text.context_length)
    # the guide's config.json leaves out transformers' defaults; the architecture keys agree once filled in
    assert {key: text.encoder_config[key] for key in HF_DEFAULTS} == {
        key: converted_text.encoder_config[key] for key in HF_DEFAULTS}


def test_the_names_are_architecture_only_and_listed_with_their_counts():
    assert set(NAMES) <= ARCHITECTURE_ONLY_NAMES
    infos = {info.name: info for info in describe_models(NAMES)}
    assert {name: info.parameters for name, info in infos.items()} == {
        name: REFERENCE[name]["parameters"] for name in NAMES}
    assert all(info.weights_url is None and info.image_size == (224, 224) for info in infos.values())


@pytest.mark.parametrize("name, command", [
    *[(name, f"python -m paddlemix.tools.convert --source open_clip --model {name} --checkpoint FILE")
      for name in OPEN_CLIP_NAMES],
    (CLIP_ROBERTA, "python -m paddlemix.tools.convert --source hf --checkpoint FOLDER"),
])
def test_without_weights_the_error_names_the_producers_checkpoint_and_the_convert_command(
        no_network, tmp_path, name, command):
    with pytest.raises(hub.ModelFilesNotFoundError) as info:
        AutoModel.from_pretrained(name)
    message = str(info.value)
    assert "without published weights" in message
    assert f"{command} --output {tmp_path / 'models' / name}" in message
    assert ("VisionTextDualEncoderModel" in message) == (name == CLIP_ROBERTA)
    assert no_network == [], "no download may be attempted"
