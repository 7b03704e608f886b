"""RoBERTa / XLM-RoBERTa / BERT tokenizers read from checkpoint folders, against transformers' ids.

The folders and transformers' outputs are made by tests/fixtures/make_tokenizer_fixtures.py: each folder
is what transformers' save_pretrained (or the hub's layout) leaves, with and without tokenizer.json, and
expected.json holds what `AutoTokenizer.from_pretrained(folder)` gives for its texts.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from paddlemix.processors.hf_tokenizer import HFTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TEXTS = EXPECTED["texts"]
FOLDERS = sorted(EXPECTED["folders"])
OPEN_CLIP_FOLDERS = sorted(f for f in FOLDERS if "open_clip_input_ids" in EXPECTED["folders"][f])
FOLDER_LENGTHS = [(folder, length) for folder in FOLDERS for length in EXPECTED["context_lengths"]]


def expected_rows(folder, length, key="input_ids"):
    """transformers' rows (stored without their trailing padding), padded back to `length`."""
    expected = EXPECTED["folders"][folder]
    pad = expected["pad_token_id"]
    return np.array([row + [pad] * (length - len(row)) for row in expected[key][str(length)]], dtype=np.int64)


def assert_rows_equal(actual, expected):
    differing = [i for i, (a, e) in enumerate(zip(actual.tolist(), expected.tolist())) if a != e]
    assert not differing, "\n".join(
        f"{ascii(TEXTS[i][:40])}: {actual[i].tolist()} != {expected[i].tolist()}" for i in differing
    )
    assert actual.shape == expected.shape


@pytest.fixture(scope="module")
def tokenizers():
    return {folder: HFTokenizer.from_folder(FIXTURES / folder) for folder in FOLDERS}


@pytest.mark.parametrize("folder,length", FOLDER_LENGTHS)
def test_ids_match_transformers_padded_and_truncated(tokenizers, folder, length):
    ids = tokenizers[folder](TEXTS, context_length=length)
    assert ids.dtype == np.int64
    assert_rows_equal(ids, expected_rows(folder, length))


@pytest.mark.parametrize("folder,length", [(f, n) for f, n in FOLDER_LENGTHS if f in OPEN_CLIP_FOLDERS])
def test_whitespace_clean_ids_match_open_clip_hf_tokenizer(folder, length):
    tokenizer = HFTokenizer.from_folder(FIXTURES / folder, context_length=length, clean="whitespace")
    assert_rows_equal(tokenizer(TEXTS), expected_rows(folder, length, key="open_clip_input_ids"))


@pytest.mark.parametrize("folder", FOLDERS)
def test_encode_matches_transformers_without_special_tokens(tokenizers, folder):
    assert [tokenizers[folder].encode(text) for text in TEXTS] == EXPECTED["folders"][folder]["encoded"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_decode_matches_transformers_skipping_special_tokens(tokenizers, folder):
    length = EXPECTED["context_lengths"][0]
    decoded = [tokenizers[folder].decode(row) for row in expected_rows(folder, length)]
    assert decoded == EXPECTED["folders"][folder]["decoded"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_special_ids_and_vocab_size_match_transformers(tokenizers, folder):
    tokenizer, expected = tokenizers[folder], EXPECTED["folders"][folder]
    assert (tokenizer.pad_token_id, tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.vocab_size) == (
        expected["pad_token_id"], expected["sot_token_id"], expected["eot_token_id"], expected["vocab_size"])


def test_slow_files_and_tokenizer_json_give_the_same_ids(tokenizers):
    for family in ("roberta", "xlm_roberta", "bert"):
        assert (tokenizers[f"{family}_slow"](TEXTS) == tokenizers[f"{family}_fast"](TEXTS)).all(), family


def test_default_context_length_is_the_instance_one_and_a_string_is_one_row():
    short = EXPECTED["context_lengths"][-1]
    tokenizer = HFTokenizer.from_folder(FIXTURES / "roberta_fast", context_length=short)
    assert tokenizer.context_length == short
    assert_rows_equal(tokenizer(TEXTS), expected_rows("roberta_fast", short))
    assert tokenizer(TEXTS[0]).tolist() == tokenizer([TEXTS[0]]).tolist()
    assert tokenizer([]).shape == (0, short)


def test_context_length_shorter_than_the_special_tokens_is_rejected(tokenizers):
    with pytest.raises(ValueError, match="context_length must fit the 2 special tokens"):
        tokenizers["bert_fast"]("a cat", context_length=1)


@pytest.mark.parametrize("folder", ["roberta_slow", "xlm_roberta_slow", "bert_fast"])
@pytest.mark.parametrize("clean", [None, "whitespace"])
def test_pickled_tokenizer_gives_the_same_ids_and_text(folder, clean):
    tokenizer = HFTokenizer.from_folder(FIXTURES / folder, context_length=16, clean=clean)
    restored = pickle.loads(pickle.dumps(tokenizer))
    attributes = ("pad_token_id", "sot_token_id", "eot_token_id", "vocab_size", "context_length", "clean")
    assert [getattr(restored, a) for a in attributes] == [getattr(tokenizer, a) for a in attributes]
    assert (restored(TEXTS) == tokenizer(TEXTS)).all()
    assert [restored.decode(row) for row in restored(TEXTS)] == [tokenizer.decode(row) for row in tokenizer(TEXTS)]


def test_unknown_clean_mode_is_rejected():
    with pytest.raises(ValueError, match="clean must be one of"):
        HFTokenizer.from_folder(FIXTURES / "bert_fast", clean="lower")


def copy_folder(name, tmp_path, drop=()):
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    for file_name in drop:
        (folder / file_name).unlink()
    return folder


def test_folder_without_tokenizer_files_names_the_files_expected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no tokenizer files; expected tokenizer.json, "
                                                "or the slow files: vocab.json"):
        HFTokenizer.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        HFTokenizer.from_folder(tmp_path / "missing")


def test_missing_slow_file_is_named(tmp_path):
    folder = copy_folder("roberta_slow", tmp_path, drop=["merges.txt"])
    with pytest.raises(FileNotFoundError, match=f"{folder} lacks merges.txt for its roberta tokenizer"):
        HFTokenizer.from_folder(folder)


@pytest.mark.parametrize("folder,file_name,match", [
    ("roberta_fast", "tokenizer.json", "tokenizer.json is not a tokenizer.json that tokenizers can read"),
    ("bert_slow", "tokenizer_config.json", "tokenizer_config.json is not valid JSON"),
    ("roberta_slow", "vocab.json", "vocab.json is not valid JSON"),
    ("xlm_roberta_slow", "sentencepiece.bpe.model", "sentencepiece.bpe.model is not a sentencepiece model"),
])
def test_corrupt_file_is_named(tmp_path, folder, file_name, match):
    path = copy_folder(folder, tmp_path) / file_name
    path.write_bytes(b"\x89 not what it should be {" + path.read_bytes()[:40])
    with pytest.raises(ValueError, match=match):
        HFTokenizer.from_folder(path.parent)


def test_malformed_merge_line_is_named(tmp_path):
    merges = copy_folder("roberta_slow", tmp_path) / "merges.txt"
    lines = merges.read_text(encoding="utf-8").split("\n")
    lines[3] = "three symbols here"
    merges.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt line 4 is not a merge of two symbols: 'three symbols here'"):
        HFTokenizer.from_folder(merges.parent)


def test_merges_of_another_vocabulary_are_rejected(tmp_path):
    merges = copy_folder("roberta_slow", tmp_path) / "merges.txt"
    merges.write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merges.txt does not fit .*vocab.json"):
        HFTokenizer.from_folder(merges.parent)


def test_sentencepiece_bpe_model_is_rejected_with_the_fix(tmp_path):
    path = copy_folder("xlm_roberta_slow", tmp_path) / "sentencepiece.bpe.model"
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="of type 2, but XLM-RoBERTa's is Unigram .* add the checkpoint's tokenizer"):
        HFTokenizer.from_folder(path.parent)


def test_tokenizer_json_alone_cannot_tell_the_family(tmp_path):
    folder = copy_folder("roberta_hub_layout", tmp_path, drop=["vocab.json", "merges.txt"])
    with pytest.raises(ValueError, match="has tokenizer.json but neither a tokenizer_config.json"):
        HFTokenizer.from_folder(folder)


def edit_config(folder, **changes):
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")


def test_unsupported_tokenizer_class_is_named(tmp_path):
    folder = copy_folder("bert_fast", tmp_path)
    edit_config(folder, tokenizer_class="GPT2Tokenizer")
    with pytest.raises(ValueError, match="names tokenizer_class 'GPT2Tokenizer'; paddlemix reads RobertaTokenizer"):
        HFTokenizer.from_folder(folder)


def test_left_padding_is_rejected(tmp_path):
    folder = copy_folder("xlm_roberta_fast", tmp_path)
    edit_config(folder, padding_side="left")
    with pytest.raises(ValueError, match="sets padding_side='left'"):
        HFTokenizer.from_folder(folder)


def test_config_ids_that_disagree_with_the_vocabulary_are_rejected(tmp_path):
    folder = copy_folder("bert_slow", tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    edit_config(folder, added_tokens_decoder={"7": config["added_tokens_decoder"]["0"]})
    with pytest.raises(ValueError, match=r"puts '\[PAD\]' at id 7, but the vocabulary gives it 0"):
        HFTokenizer.from_folder(folder)


def test_special_token_missing_from_the_slow_vocabulary_is_named(tmp_path):
    folder = copy_folder("roberta_slow", tmp_path)
    edit_config(folder, cls_token="<cls>")
    with pytest.raises(ValueError, match="vocab.json lacks the special token '<cls>'"):
        HFTokenizer.from_folder(folder)


def test_legacy_added_tokens_file_is_rejected(tmp_path):
    folder = copy_folder("bert_cased_legacy_config", tmp_path)
    (folder / "added_tokens.json").write_text('{"<new>": 455}')
    with pytest.raises(ValueError, match="added_tokens.json is transformers' pre-4.34 added-token format"):
        HFTokenizer.from_folder(folder)
