"""The registry is PaddleMIX's published zoo: names, architectures and parameter counts equal to
open_clip's, preprocessing as each model was trained, PaddleMIX's download URL per name.

open_clip's facts come from tests/fixtures/registry_reference.json (tests/fixtures/make_registry_fixtures.py);
the names with a pretrained-language-model text tower are checked by tests/test_registry_text_towers.py.
"""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoModel, AutoProcessor, list_models
from paddlemix.models import CLIPConfig, parameter_count
from paddlemix.models import hub
from paddlemix.models.configuration import PreprocessConfig
from paddlemix.models.registry import ARCHITECTURE_ONLY_NAMES, describe_models, open_clip_name
from paddlemix.processors import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "registry_reference.json").read_text())
OPEN_CLIP = {name: facts for name, facts in REFERENCE.items() if not name.startswith("_")}
TEXT_TOWER_NAMES = sorted(name for name in json.loads(
    (Path(__file__).parent / "fixtures" / "text_tower_registry_reference.json").read_text()) if not name.startswith("_"))

# The model names of PaddleMIX's zoo tables: paddlemix/examples/{clip,evaclip,coca}/README.md.
PADDLEMIX_PUBLISHED = {
    "CLIP": [
        "CLIP-ViT-bigG-14-laion2B-39B-b160k", "CLIP-ViT-g-14-laion2B-s34B-b88K", "CLIP-ViT-H-14-laion2B-s32B-b79K",
        "CLIP-ViT-L-14-laion2B-s32B-b82K", "CLIP-ViT-B-16-laion2B-s34B-b88K", "CLIP-ViT-B-32-laion2B-s34B-b79K",
        "CLIP-ViT-L-14-DataComp.XL-s13B-b90K", "CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
        "CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "CLIP-ViT-B-32-256x256-DataComp-s34B-b86K",
        "DFN5B-CLIP-ViT-H-14-378", "DFN5B-CLIP-ViT-H-14", "DFN2B-CLIP-ViT-L-14", "DFN2B-CLIP-ViT-B-16",
    ],
    "EVA": [
        "EVA01-CLIP-g-14", "EVA01-CLIP-g-14-plus", "EVA02-CLIP-B-16", "EVA02-CLIP-L-14", "EVA02-CLIP-L-14-336",
        "EVA02-CLIP-bigE-14", "EVA02-CLIP-bigE-14-plus",
    ],
    "CoCa": [
        "CoCa-ViT-B-32-laion2B-s13B-b90k", "CoCa-ViT-L-14-laion2B-s13B-b90k",
        "mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k", "mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k",
    ],
}
PUBLISHED_NAMES = sorted(f"paddlemix/{family}/{name}" for family, names in PADDLEMIX_PUBLISHED.items() for name in names)
ARCHITECTURE_NAMES = ["paddlemix/CLIP/ViT-B-32", "paddlemix/CLIP/ViT-B-16", "paddlemix/CLIP/ViT-L-14",
                      "paddlemix/CLIP/ViT-L-14-336", "paddlemix/SigLIP/ViT-B-16-SigLIP",
                      "paddlemix/SigLIP/ViT-B-16-SigLIP-256", "paddlemix/SigLIP/ViT-L-16-SigLIP-256",
                      "paddlemix/SigLIP/ViT-SO400M-14-SigLIP", "paddlemix/SigLIP/ViT-B-16-SigLIP2"]
MODEL_TYPES = {"CLIP": "clip", "EVA": "evaclip", "CoCa": "coca", "SigLIP": "clip"}
# PaddleMIX's examples/clip/README.md gives 986.71M for both DFN5B H-14 models: the 378 px figure.
DFN5B_H14_224_PARAMETERS = 986_109_441
DFN5B_H14_378_PARAMETERS = 986_714_881


def test_registry_is_paddlemix_published_zoo_plus_architecture_names():
    assert len(PUBLISHED_NAMES) == 25
    assert sorted(list_models()) == sorted(PUBLISHED_NAMES + ARCHITECTURE_NAMES + TEXT_TOWER_NAMES)
    assert ARCHITECTURE_ONLY_NAMES == set(ARCHITECTURE_NAMES + TEXT_TOWER_NAMES)
    assert set(OPEN_CLIP) | set(TEXT_TOWER_NAMES) == set(list_models()), "the fixtures cover every registry name"


@pytest.mark.parametrize("name", sorted(OPEN_CLIP))
def test_every_name_loads_as_a_config_offline(name):
    config = AutoConfig.from_pretrained(name)
    assert config.name == name
    assert config.model_type == MODEL_TYPES[name.split("/")[1]]


@pytest.mark.parametrize("name", sorted(OPEN_CLIP))
def test_parameter_count_equals_open_clips_for_the_same_architecture(name):
    with paddle.LazyGuard():
        model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    assert parameter_count(model) == OPEN_CLIP[name]["parameters"]
    assert not any(p._is_initialized() for p in model.parameters()), "LazyGuard must not allocate parameters"


def test_dfn5b_h14_at_224_px_has_fewer_parameters_than_paddlemix_readme_says():
    counts = {info.name: info.parameters for info in describe_models(
        ["paddlemix/CLIP/DFN5B-CLIP-ViT-H-14", "paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378"])}
    assert counts["paddlemix/CLIP/DFN5B-CLIP-ViT-H-14"] == DFN5B_H14_224_PARAMETERS
    assert counts["paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378"] == DFN5B_H14_378_PARAMETERS  # README's 986.71M
    # The difference is the position embedding: (27^2 - 16^2) more tokens of width 1280.
    assert DFN5B_H14_378_PARAMETERS - DFN5B_H14_224_PARAMETERS == (27 ** 2 - 16 ** 2) * 1280


@pytest.mark.parametrize("name", sorted(OPEN_CLIP))
def test_architecture_equals_open_clips_config_of_the_same_model(name):
    config = AutoConfig.from_pretrained(name)
    reference = OPEN_CLIP[name]["model_cfg"]
    assert open_clip_name(name) == OPEN_CLIP[name]["open_clip_model"]
    assert config.embed_dim == reference["embed_dim"]
    assert config.quick_gelu == reference.get("quick_gelu", False)
    compared = 0
    for tower in ("vision_cfg", "text_cfg", "multimodal_cfg"):
        for key, value in reference.get(tower, {}).items():
            if hasattr(getattr(config, tower, None), key):  # e.g. not timm_model_name, output_tokens
                assert getattr(getattr(config, tower), key) == value, f"{tower}.{key}"
                compared += 1
    assert compared >= 6


@pytest.mark.parametrize("name", sorted(OPEN_CLIP))
def test_preprocessing_is_what_open_clip_gives_these_weights(name):
    expected = OPEN_CLIP[name]["preprocess_cfg"]
    preprocess = AutoConfig.from_pretrained(name).preprocess_cfg
    assert preprocess.mean == tuple(expected["mean"]) and preprocess.std == tuple(expected["std"])
    assert (preprocess.interpolation, preprocess.resize_mode, preprocess.fill_color) == (
        expected["interpolation"], expected["resize_mode"], expected["fill_color"])


def test_dfn5b_models_squash_and_laion2b_l14_uses_inception_statistics():
    for name in ("paddlemix/CLIP/DFN5B-CLIP-ViT-H-14", "paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378"):
        assert AutoConfig.from_pretrained(name).preprocess_cfg.resize_mode == "squash"
    for name in ("paddlemix/CLIP/DFN2B-CLIP-ViT-L-14", "paddlemix/EVA/EVA02-CLIP-B-16"):
        assert AutoConfig.from_pretrained(name).preprocess_cfg.resize_mode == "shortest"
    laion_l14 = AutoConfig.from_pretrained("paddlemix/CLIP/CLIP-ViT-L-14-laion2B-s32B-b82K").preprocess_cfg
    assert laion_l14.mean == laion_l14.std == (0.5, 0.5, 0.5)


def test_processor_of_a_registry_name_preprocesses_as_its_model_was_trained():
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    squash = AutoProcessor.from_pretrained("paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378")(images=[image], return_tensors="np")
    np.testing.assert_array_equal(squash["image"][0], image_transform(378, is_train=False, resize_mode="squash")(image))
    inception = AutoProcessor.from_pretrained("paddlemix/CLIP/CLIP-ViT-L-14-laion2B-s32B-b82K")(
        images=[image], return_tensors="np")
    np.testing.assert_array_equal(inception["image"][0],
                                  image_transform(224, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(image))


def test_a_config_without_preprocess_cfg_gets_openai_clip_preprocessing():
    config = CLIPConfig.from_dict({"embed_dim": 16})
    assert config.preprocess_cfg == PreprocessConfig()
    assert (config.preprocess_cfg.mean, config.preprocess_cfg.std) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert (config.preprocess_cfg.interpolation, config.preprocess_cfg.resize_mode) == ("bicubic", "shortest")


def test_preprocess_cfg_survives_save_and_reload(tmp_path):
    config = AutoConfig.from_pretrained("paddlemix/CLIP/DFN5B-CLIP-ViT-H-14")
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).preprocess_cfg == config.preprocess_cfg


@pytest.mark.parametrize("values, match", [({"resize_mode": "crop"}, "resize_mode"),
                                           ({"interpolation": "nearest"}, "interpolation"),
                                           ({"mean": [0.5, 0.5]}, "3 values"),
                                           ({"size": 224}, "unknown key")])
def test_a_bad_preprocess_cfg_is_refused_where_it_is_read(values, match):
    with pytest.raises(ValueError, match=match):
        CLIPConfig.from_dict({"preprocess_cfg": values})


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_published_name_downloads_from_paddlemix_community_prefix(name):
    # PaddleNLP's bos_download: https://bj.bcebos.com/paddlenlp/models/community/{repo_id}/{filename}
    assert hub.weights_url(name) == f"https://bj.bcebos.com/paddlenlp/models/community/{name}/model_state.pdparams"


def test_eva01_g14_url_is_its_own_name_not_the_readmes_b14_link():
    # PaddleMIX's evaclip README links EVA01-CLIP-g-14 to .../EVA/EVA01-CLIP-B-14/; its code
    # (examples/eva02/run_eva02_pretrain_dist.py, tests/models/test_eva02.py) loads paddlemix/EVA/EVA01-CLIP-g-14.
    assert hub.weights_url("paddlemix/EVA/EVA01-CLIP-g-14") == (
        "https://bj.bcebos.com/paddlenlp/models/community/paddlemix/EVA/EVA01-CLIP-g-14/model_state.pdparams")
    assert hub.weights_url("paddlemix/EVA/EVA01-CLIP-g-14-plus").endswith("/EVA/EVA01-CLIP-g-14-plus/model_state.pdparams")


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_architecture_name_without_weights_fails_at_once_saying_how_to_convert(no_network, tmp_path, name):
    assert hub.weights_url(name) is None
    with pytest.raises(hub.ModelFilesNotFoundError) as info:
        AutoModel.from_pretrained(name)
    message = str(info.value)
    assert "without published weights" in message
    assert f"python -m paddlemix.tools.convert --source open_clip --model {name}" in message
    assert str(tmp_path / "models" / name) in message
    assert no_network == [], "no download may be attempted"


def test_architecture_name_with_converted_weights_in_the_cache_uses_them(no_network, tmp_path):
    weights = tmp_path / "models" / "paddlemix/CLIP/ViT-B-32" / "model_state.pdparams"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"converted")
    assert hub.cached_weights_file("paddlemix/CLIP/ViT-B-32") == weights
    assert no_network == []


def test_published_name_offline_says_where_to_put_the_file(no_network, tmp_path):
    name = "paddlemix/CLIP/DFN2B-CLIP-ViT-B-16"
    with pytest.raises(hub.ModelFilesNotFoundError) as info:
        AutoModel.from_pretrained(name)
    message = str(info.value)
    target = tmp_path / "models" / name
    assert f"Put model_state.pdparams in {target}" in message
    assert no_network == [hub.weights_url(name)]
    assert list(target.iterdir()) == [], "no partial download left"


def test_describe_models_tells_cached_weights_from_missing_ones(no_network, tmp_path):
    cached = "paddlemix/EVA/EVA02-CLIP-B-16"
    (tmp_path / "models" / cached).mkdir(parents=True)
    (tmp_path / "models" / cached / "model_state.pdparams").write_bytes(b"weights")
    infos = {info.name: info for info in describe_models()}
    assert set(infos) == set(list_models())
    assert [name for name, info in infos.items() if info.cached] == [cached]
    assert infos[cached].weights_file == tmp_path / "models" / cached / "model_state.pdparams"
    assert infos["paddlemix/EVA/EVA02-CLIP-L-14-336"].image_size == (336, 336)
    assert infos["paddlemix/CLIP/ViT-B-32"].weights_url is None
    assert no_network == []
