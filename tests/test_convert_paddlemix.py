"""PaddleMIX model directories load here and compute PaddleMIX's features.

The directories in tests/fixtures/paddlemix/ were written by PaddleMIX's own CLIP, EVA-CLIP and CoCa
code (`save_pretrained`, float32 and each family's published dtype), and the outputs beside them are
PaddleMIX's own (tests/fixtures/make_paddlemix_fixtures.py). Two differences are paddlemix's on
purpose, and measured here: EVA's attention sub-LN epsilon (EVA-CLIP's 1e-6; PaddleMIX builds 1e-5)
and CoCa's padding mask (open_clip 3's, which changes only the logits after a caption has ended).
"""

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoModel
from paddlemix.models import registry
from paddlemix.models.checkpoint_formats import convert_state
from paddlemix.models.state_dict import check_state_dict
from paddlemix.tools.convert import main as convert_main

FIXTURES = Path(__file__).parent / "fixtures" / "paddlemix"
PUBLISHED_DTYPE = {"pmix_clip": "float16", "pmix_eva02": "bfloat16", "pmix_eva01": "bfloat16", "pmix_coca": "bfloat16"}
TOLERANCE = 1e-4  # max abs difference of unnormalised features / logits
PADDLEMIX_INNER_ATTN_EPS = 1e-5  # PaddleMIX's EVA Attention builds inner_attn_ln with Paddle's default
PAD_ID = 0


def directory(name: str, published: bool) -> Path:
    return FIXTURES / (f"{name}-{PUBLISHED_DTYPE[name]}" if published else name)


def set_inner_attention_eps(model, eps: float) -> int:
    norms = [layer for path, layer in model.named_sublayers()
             if path.endswith("attn.inner_attn_ln") and isinstance(layer, paddle.nn.LayerNorm)]
    for norm in norms:
        norm._epsilon = eps
    return len(norms)


def outputs(model, reference):
    """Unnormalised features and (CoCa) caption logits on PaddleMIX's inputs, computed as PaddleMIX
    does: its CoCa takes context_length + 1 tokens and drops the last before the text tower."""
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    with paddle.no_grad():
        if model.config.model_type != "coca":
            return {"image_features": model.encode_image(image).numpy(), "text_features": model.encode_text(text).numpy()}
        image_features, image_tokens = model.visual.forward_with_tokens(image)
        text_features, text_states = model.text.forward_with_tokens(text[:, :-1])
        logits = model.text_decoder(image_tokens, text_states)
    return {"image_features": image_features.numpy(), "text_features": text_features.numpy(), "logits": logits.numpy()}


def max_diff(ours, reference, dtype, key):
    expected = reference[f"{dtype}/{key}"]
    if key == "logits":  # positions whose label is a caption token (the loss and generation read no other)
        keep = reference["text"][:, 1:] != PAD_ID
        return float(np.abs(ours[key] - expected)[keep].max())
    return float(np.abs(ours[key] - expected).max())


@pytest.mark.parametrize("published", [False, True], ids=["float32", "published_dtype"])
@pytest.mark.parametrize("name", sorted(PUBLISHED_DTYPE))
def test_paddlemix_model_directory_loads_strictly_and_gives_paddlemix_features(name, published):
    model = AutoModel.from_pretrained(str(directory(name, published)))  # strict: any key left over fails
    if name == "pmix_eva02":  # compare like with like; the epsilon's own effect is the next test
        assert set_inner_attention_eps(model, PADDLEMIX_INNER_ATTN_EPS) == 2
    reference = np.load(FIXTURES / f"{name}.io.npz")
    dtype = PUBLISHED_DTYPE[name] if published else "float32"
    ours = outputs(model, reference)
    for key in ours:
        assert max_diff(ours, reference, dtype, key) < TOLERANCE, key


def test_eva_attention_sub_ln_keeps_eva_clip_epsilon_which_alone_separates_it_from_paddlemix():
    model = AutoModel.from_pretrained(str(directory("pmix_eva02", published=False)))
    reference = np.load(FIXTURES / "pmix_eva02.io.npz")
    with_eva_clip_eps = max_diff(outputs(model, reference), reference, "float32", "image_features")
    set_inner_attention_eps(model, PADDLEMIX_INNER_ATTN_EPS)
    with_paddlemix_eps = max_diff(outputs(model, reference), reference, "float32", "image_features")
    assert with_eva_clip_eps > 1e-4  # 4.6e-4 on this fixture: EVA-CLIP's weights were trained with 1e-6
    assert with_paddlemix_eps < 1e-6


def test_coca_logits_differ_from_paddlemix_only_where_the_caption_has_ended():
    model = AutoModel.from_pretrained(str(directory("pmix_coca", published=False)))
    reference = np.load(FIXTURES / "pmix_coca.io.npz")
    diff = np.abs(outputs(model, reference)["logits"] - reference["float32/logits"]).max(axis=-1)
    after_caption = reference["text"][:, 1:] == PAD_ID
    assert diff[~after_caption].max() < TOLERANCE
    assert diff[after_caption].max() > TOLERANCE  # PaddleMIX masks padding for the CLS query only


@pytest.mark.parametrize("name", sorted(PUBLISHED_DTYPE))
def test_convert_cli_reads_paddlemix_pdparams_with_its_config(name, tmp_path):
    source = directory(name, published=True)
    output = tmp_path / "converted"
    assert convert_main(["--source", "paddlemix", "--model", str(source / "config.json"),
                         "--checkpoint", str(source / "model_state.pdparams"), "--output", str(output)]) == 0
    converted, direct = AutoModel.from_pretrained(str(output)), AutoModel.from_pretrained(str(source))
    for key, value in direct.state_dict().items():
        np.testing.assert_array_equal(converted.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_paddlemix_config_translates_each_family():
    clip = AutoConfig.from_pretrained(str(directory("pmix_clip", False)))
    assert (clip.model_type, clip.embed_dim, clip.vision_cfg.width, clip.text_cfg.context_length) == ("clip", 16, 32, 12)
    eva = AutoConfig.from_pretrained(str(directory("pmix_eva02", False))).vision_cfg
    assert (eva.rope, eva.naiveswiglu, eva.subln, eva.attn_bias, eva.norm_eps, eva.pt_hw_seq_len) == (
        True, True, True, "qv", 1e-6, 2)
    coca = AutoConfig.from_pretrained(str(directory("pmix_coca", False)))
    assert (coca.vision_cfg.attentional_pool, coca.vision_cfg.attn_pooler_queries, coca.text_cfg.embed_cls) == (True, 9, True)


def test_paddlemix_config_with_an_option_paddlemix_cannot_express_is_refused_naming_it(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(directory("pmix_eva02", False), target)
    config = json.loads((target / "config.json").read_text())
    config["vision_cfg"]["use_rel_pos_bias"] = True
    config["vision_cfg"]["window_attention"] = 7
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_rel_pos_bias"):
        AutoConfig.from_pretrained(str(target))
    del config["vision_cfg"]["use_rel_pos_bias"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"vision_cfg\.window_attention"):
        AutoConfig.from_pretrained(str(target))


def test_paddlemix_checkpoint_missing_a_projection_is_refused_with_the_keys(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(directory("pmix_clip", False), target)
    state = paddle.load(str(target / "model_state.pdparams"))
    del state["transformer.resblocks.1.attn.k_proj.weight"]
    paddle.save(state, str(target / "model_state.pdparams"))
    with pytest.raises(ValueError, match=r"missing \(1\): text\.transformer\.resblocks\.1\.attn\.qkv\.weight"):
        AutoModel.from_pretrained(str(target))


def published_layouts():
    with gzip.open(FIXTURES / "published_layouts.json.gz", "rt") as file:
        return json.load(file)


# Tower options that change how a model runs, not its weights (the layouts were recorded without them).
RUNTIME_OPTIONS = ("xattn", "drop_path_rate", "patch_dropout")


def architecture(config, depth: int) -> dict:
    towers = {}
    for tower in config.tower_configs():
        if tower == "preprocess_cfg":  # how images are prepared, not the weights' layout
            continue
        values = dataclasses.asdict(getattr(config, tower))
        values.update(layers=depth, **{key: None for key in RUNTIME_OPTIONS if key in values})
        towers[tower] = values
    return dict(towers, model_type=config.model_type, embed_dim=config.embed_dim, quick_gelu=config.quick_gelu)


@pytest.mark.parametrize("name", sorted(published_layouts()))
def test_every_published_name_maps_paddlemix_keys_and_shapes_onto_its_registry_architecture(name, tmp_path):
    """PaddleMIX's state dict for the name's architecture (its own code's keys and shapes, recorded at
    depth 2 by make_paddlemix_fixtures.py) converts to exactly our model's keys and shapes, and its
    config translates to the registry's architecture."""
    layout = published_layouts()[name]
    depth = layout["config"]["vision_cfg"]["layers"]
    (tmp_path / "config.json").write_text(json.dumps(dict(layout["config"], architectures=["PaddleMIX"])))
    ours = AutoConfig.from_pretrained(name)
    assert architecture(AutoConfig.from_pretrained(str(tmp_path)), depth) == architecture(ours, depth)
    for tower in ours.tower_configs():
        if tower != "preprocess_cfg":
            getattr(ours, tower).layers = depth
    # Zero-stride stand-ins: the mapping reads shapes, so nothing of model size is allocated up front.
    state = {key: np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, [0] * len(shape))
             for key, shape in layout["shapes"].items()}
    with paddle.LazyGuard():
        model = AutoModel.from_config(ours)
    expected = {key: tuple(int(d) for d in value.shape) for key, value in model.state_dict().items()}
    check_state_dict(expected, convert_state("paddlemix", state), source=f"PaddleMIX's {name}")


@pytest.mark.parametrize("name", sorted(PUBLISHED_DTYPE))
def test_published_name_loads_paddlemix_weights_from_ppmix_home(name, tmp_path, monkeypatch):
    """`from_pretrained(<published name>)` with PaddleMIX's file in $PPMIX_HOME/models/<name>/: the
    tiny fixture stands in for the full-size model under a registry name of its own."""
    source = directory(name, published=True)
    family = {"pmix_clip": "CLIP", "pmix_coca": "CoCa"}.get(name, "EVA")
    registry_name = f"paddlemix/{family}/{name}-published"
    configs = tmp_path / "model_configs" / family
    configs.mkdir(parents=True)
    AutoConfig.from_pretrained(str(source)).save_pretrained(configs)  # the registry entry, in our format
    (configs / "config.json").rename(configs / f"{name}-published.json")
    monkeypatch.setattr(registry, "MODEL_CONFIG_DIR", tmp_path / "model_configs")
    monkeypatch.setenv("PPMIX_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "models" / registry_name
    cache.mkdir(parents=True)
    shutil.copy(source / "model_state.pdparams", cache / "model_state.pdparams")

    model = AutoModel.from_pretrained(registry_name)
    reference = np.load(FIXTURES / f"{name}.io.npz")
    if name == "pmix_eva02":
        set_inner_attention_eps(model, PADDLEMIX_INNER_ATTN_EPS)
    ours = outputs(model, reference)
    assert max_diff(ours, reference, PUBLISHED_DTYPE[name], "image_features") < TOLERANCE
    assert max_diff(ours, reference, PUBLISHED_DTYPE[name], "text_features") < TOLERANCE
