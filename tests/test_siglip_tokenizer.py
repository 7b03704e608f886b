"""SigLIP's and SigLIP 2's tokenizers, read from the model folder, against open_clip's.

The folders (the layouts of the hub repos timm/ViT-B-16-SigLIP, timm/ViT-B-16-SigLIP2 and
google/siglip-base-patch16-224, written by open_clip's and transformers' own classes) and the ids of open_clip's
`HFTokenizer(folder, clean="canonicalize")` are made by tests/fixtures/make_siglip_tokenizer_fixtures.py.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoProcessor
from paddlemix.models import CLIP, CLIPConfig
from paddlemix.processors import get_tokenizer
from paddlemix.processors.hf_tokenizer import HFTokenizer, clean_canonicalize

FIXTURES = Path(__file__).parent / "fixtures" / "siglip_tokenizers"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TEXTS = EXPECTED["texts"]
FOLDERS = sorted(EXPECTED["folders"])
FOLDER_LENGTHS = [(folder, length) for folder in FOLDERS for length in EXPECTED["context_lengths"]]
REGISTRY = Path(__file__).parents[1] / "paddlemix" / "models" / "model_configs" / "SigLIP"
# text_cfg.tokenizer -> the fixture folder laid out as that tokenizer's hub repo
FOLDER_OF = {"siglip": "siglip_timm", "siglip2": "siglip2_timm"}


def open_clip_rows(folder, length):
    return np.array(EXPECTED["folders"][folder]["input_ids"][str(length)], dtype=np.int64)


def assert_rows_equal(actual, expected):
    differing = [i for i, (a, e) in enumerate(zip(actual.tolist(), expected.tolist())) if a != e]
    assert not differing, "\n".join(f"{ascii(TEXTS[i][:40])}: {actual[i].tolist()} != {expected[i].tolist()}"
                                    for i in differing)
    assert actual.shape == expected.shape


def read(folder, length=None):
    return HFTokenizer.from_folder(FIXTURES / folder, context_length=length or EXPECTED["context_lengths"][0],
                                   clean="canonicalize")


def model_folder(tmp_path, registry_name, tokenizer_folder=None):
    """A model folder: the registry config `registry_name` (file name without .json) as config.json, beside the
    files of fixture folder `tokenizer_folder` (none when None)."""
    folder = tmp_path / registry_name
    CLIPConfig.from_dict(json.loads((REGISTRY / f"{registry_name}.json").read_text())).save_pretrained(folder)
    if tokenizer_folder:
        for path in (FIXTURES / tokenizer_folder).iterdir():
            shutil.copy(path, folder)
    return folder


def test_canonicalize_cleans_as_open_clip():
    assert [clean_canonicalize(text) for text in TEXTS] == EXPECTED["cleaned"]


@pytest.mark.parametrize("folder,length", FOLDER_LENGTHS)
def test_ids_equal_open_clips_for_every_caption(folder, length):
    ids = read(folder, length)(TEXTS)
    assert ids.dtype == np.int64
    assert_rows_equal(ids, open_clip_rows(folder, length))


@pytest.mark.parametrize("folder", FOLDERS)
def test_encode_equals_transformers_on_the_cleaned_text(folder):
    tokenizer = read(folder)
    assert [tokenizer.encode(text) for text in TEXTS] == EXPECTED["folders"][folder]["encoded"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_decode_equals_transformers_skipping_special_tokens_and_padding(folder):
    tokenizer, length = read(folder), EXPECTED["context_lengths"][0]
    assert [tokenizer.decode(row) for row in open_clip_rows(folder, length)] == EXPECTED["folders"][folder]["decoded"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_decode_gives_the_cleaned_caption_back_where_transformers_does(folder):
    tokenizer = read(folder)
    round_trips = [i for i, decoded in enumerate(EXPECTED["folders"][folder]["decoded"])
                   if decoded == EXPECTED["cleaned"][i]]
    assert len(round_trips) > len(TEXTS) // 2
    assert [tokenizer.decode(tokenizer(TEXTS[i])[0]) for i in round_trips] == [EXPECTED["cleaned"][i]
                                                                               for i in round_trips]


@pytest.mark.parametrize("folder", FOLDERS)
def test_pad_id_and_vocab_size_are_transformers(folder):
    tokenizer, expected = read(folder), EXPECTED["folders"][folder]
    assert (tokenizer.pad_token_id, tokenizer.vocab_size) == (expected["pad_token_id"], expected["vocab_size"])


@pytest.mark.parametrize("folder,pad,sot,eot", [
    ("siglip_timm", 1, None, 1),  # T5's </s> closes the row and pads it
    ("siglip_hf", 1, None, 1),
    ("siglip2_timm", 0, None, 1),  # Gemma: no <bos>, <eos> then <pad>
    ("siglip2_config_defaults", 0, 2, None),  # GemmaTokenizerFast's defaults: <bos> first, no <eos>
])
def test_rows_start_end_and_pad_as_the_config_says(folder, pad, sot, eot):
    tokenizer = read(folder)
    assert (tokenizer.pad_token_id, tokenizer.sot_token_id, tokenizer.eot_token_id) == (pad, sot, eot)


def test_config_options_that_transformers_applies_change_the_ids():
    """add_prefix_space makes T5TokenizerFast convert spiece.model again; a Gemma config without add_bos_token /
    add_eos_token gets the class's defaults. Both give other ids than tokenizer.json alone would."""
    for changed, original in (("siglip_prefix_space", "siglip_timm"), ("siglip2_config_defaults", "siglip2_timm")):
        assert (read(changed)(TEXTS) != read(original)(TEXTS)).any(), changed


def test_slow_files_and_tokenizer_json_give_the_same_ids():
    assert (read("siglip_slow_files")(TEXTS) == read("siglip_timm")(TEXTS)).all()


def test_rows_are_always_context_length_long():
    tokenizer = read("siglip_timm")
    assert tokenizer(["a cat"]).shape == (1, EXPECTED["context_lengths"][0])
    assert tokenizer([]).shape == (0, EXPECTED["context_lengths"][0])
    assert tokenizer("a cat", context_length=5).tolist() == tokenizer(["a cat"], context_length=5).tolist()


def tiny_siglip_config(registry_name: str) -> dict:
    """Registry config `registry_name` with towers small enough for a test, its text tower's options kept."""
    config = json.loads((REGISTRY / f"{registry_name}.json").read_text())
    config["embed_dim"] = 32  # SigLIP's image embedding is the vision width (proj_type none)
    config["vision_cfg"].update(image_size=32, patch_size=16, width=32, layers=1, head_width=16)
    config["text_cfg"].update(context_length=16, vocab_size=512, width=32, heads=2, layers=2)
    return config


@pytest.mark.parametrize("registry_name", ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"])
def test_text_features_of_a_caption_do_not_depend_on_the_batch(tmp_path, registry_name):
    """SigLIP's text tower pools the last position, so a row padded to the batch's longest caption gives other
    features (open_clip issue #903); rows padded to context_length give each caption's features alone."""
    config = CLIPConfig.from_dict(tiny_siglip_config(registry_name))
    folder = tmp_path / "model"
    config.save_pretrained(folder)
    for path in (FIXTURES / FOLDER_OF[config.text_cfg.tokenizer]).iterdir():
        shutil.copy(path, folder)
    paddle.seed(0)
    model = CLIP(AutoConfig.from_pretrained(folder))
    model.eval()
    tokenizer = get_tokenizer(model)
    captions = ["a cat", "two dogs on the beach", "Ein Hund!"]
    with paddle.no_grad():
        batch = model.encode_text(paddle.to_tensor(tokenizer(captions))).numpy()
        alone = np.concatenate([model.encode_text(paddle.to_tensor(tokenizer([c]))).numpy() for c in captions])
        ids = tokenizer(captions[:1])
        longest = int((tokenizer(captions) != tokenizer.pad_token_id).sum(axis=1).max()) + 1
        cut = model.encode_text(paddle.to_tensor(ids[:, :longest])).numpy()
    assert longest < tokenizer.context_length
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-5)
    assert np.abs(cut - alone[:1]).max() > 1e-3  # padding to the batch's longest would change the features


@pytest.mark.parametrize("registry_name", sorted(path.stem for path in REGISTRY.glob("*.json")))
def test_get_tokenizer_and_auto_processor_read_a_siglip_model_folder(tmp_path, registry_name):
    kind = json.loads((REGISTRY / f"{registry_name}.json").read_text())["text_cfg"]["tokenizer"]
    folder = model_folder(tmp_path, registry_name, FOLDER_OF[kind])
    tokenizer = get_tokenizer(folder)
    length = AutoConfig.from_pretrained(folder).text_cfg.context_length
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.clean == "canonicalize"
    assert tokenizer.context_length == length
    assert_rows_equal(tokenizer(TEXTS), open_clip_rows(FOLDER_OF[kind], length))
    input_ids = AutoProcessor.from_pretrained(folder)(text=TEXTS[:3], return_tensors="np")["input_ids"]
    assert_rows_equal(input_ids, open_clip_rows(FOLDER_OF[kind], length)[:3])


@pytest.mark.parametrize("registry_name,files", [
    ("ViT-B-16-SigLIP", "spiece.model tokenizer.json tokenizer_config.json special_tokens_map.json"),
    ("ViT-B-16-SigLIP2", "tokenizer.json tokenizer_config.json special_tokens_map.json"),
])
def test_model_folder_without_tokenizer_files_names_them_and_the_hub_repo(tmp_path, registry_name, files):
    folder = model_folder(tmp_path, registry_name)
    with pytest.raises(FileNotFoundError) as error:
        get_tokenizer(folder)
    message = str(error.value)
    assert f"{folder} holds no tokenizer files" in message
    assert f"huggingface-cli download timm/{registry_name} {files} --local-dir {folder}" in message


def test_registry_name_without_cached_tokenizer_names_the_cache_folder(no_network):
    with pytest.raises(FileNotFoundError, match=r"models/paddlemix/SigLIP/ViT-B-16-SigLIP2 is not a folder.*"
                                                r"huggingface-cli download timm/ViT-B-16-SigLIP2"):
        get_tokenizer("paddlemix/SigLIP/ViT-B-16-SigLIP2")


def test_gemma_folder_without_tokenizer_json_asks_for_it(tmp_path):
    folder = model_folder(tmp_path, "ViT-B-16-SigLIP2", "siglip2_timm")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer.json for its gemma tokenizer \(paddlemix does not "
                                                r"convert tokenizer.model\).*download timm/ViT-B-16-SigLIP2"):
        get_tokenizer(folder)


def test_missing_spiece_model_is_named(tmp_path):
    folder = model_folder(tmp_path, "ViT-B-16-SigLIP", "siglip_hf")
    (folder / "spiece.model").unlink()
    with pytest.raises(FileNotFoundError, match="lacks spiece.model for its siglip tokenizer"):
        get_tokenizer(folder)


@pytest.mark.parametrize("registry_name,tokenizer_folder,match", [
    ("ViT-B-16-SigLIP2", "siglip_timm", r"holds a t5 tokenizer \(T5Tokenizer, T5TokenizerFast\), but this model reads "
                                        r"GemmaTokenizer, GemmaTokenizerFast"),
    ("ViT-B-16-SigLIP", "siglip2_timm",
     "holds a gemma tokenizer .* reads T5Tokenizer, T5TokenizerFast, SiglipTokenizer"),
])
def test_another_models_tokenizer_files_are_rejected(tmp_path, registry_name, tokenizer_folder, match):
    with pytest.raises(ValueError, match=match):
        get_tokenizer(model_folder(tmp_path, registry_name, tokenizer_folder))


@pytest.mark.parametrize("tokenizer_folder,file_name,match", [
    ("siglip_hf", "spiece.model", "spiece.model is not a sentencepiece model"),
    ("siglip2_timm", "tokenizer.json", "tokenizer.json is not a tokenizer.json that tokenizers can read"),
    ("siglip_timm", "tokenizer_config.json", "tokenizer_config.json is not valid JSON"),
])
def test_broken_file_is_named(tmp_path, tokenizer_folder, file_name, match):
    path = model_folder(tmp_path, "ViT-B-16-SigLIP", tokenizer_folder) / file_name
    path.write_bytes(b"\x89 not what it should be {" + path.read_bytes()[:40])
    with pytest.raises(ValueError, match=match):
        HFTokenizer.from_folder(path.parent, clean="canonicalize")


@pytest.mark.parametrize("folder", FOLDERS)
def test_save_pretrained_writes_files_that_load_back(tmp_path, folder):
    tokenizer = read(folder)
    written = tokenizer.save_pretrained(tmp_path / "saved")
    assert sorted(written) == sorted(path.name for path in (FIXTURES / folder).iterdir())
    loaded = HFTokenizer.from_folder(tmp_path / "saved", tokenizer.context_length, clean="canonicalize")
    assert (loaded(TEXTS) == tokenizer(TEXTS)).all()


def test_pickled_tokenizer_gives_the_same_ids_and_text():
    tokenizer = read("siglip_hf", 16)
    restored = pickle.loads(pickle.dumps(tokenizer))
    assert (restored(TEXTS) == tokenizer(TEXTS)).all()
    assert [restored.decode(row) for row in restored(TEXTS)] == [tokenizer.decode(row) for row in tokenizer(TEXTS)]
