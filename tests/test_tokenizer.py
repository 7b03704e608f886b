"""The CLIP tokenizer against open_clip's ids (fixtures made by tests/fixtures/make_processor_fixtures.py)."""

import html
import json
import random
import string
from pathlib import Path

import ftfy
import numpy as np
import pytest

from paddlemix import AutoConfig
from paddlemix.processors import SimpleTokenizer, get_tokenizer
from paddlemix.processors.constants import DEFAULT_CONTEXT_LENGTH, EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE
from paddlemix.processors.tokenizer import clean_text

TOKENIZER = SimpleTokenizer()


def tokenize(texts, context_length=DEFAULT_CONTEXT_LENGTH):
    return TOKENIZER(texts, context_length=context_length)


def decode(ids):
    return TOKENIZER.decode(ids)

CASES = json.loads((Path(__file__).parent / "fixtures" / "tokenizer_cases.json").read_text())


def case_id(case):
    return f"L{case['context_length']}:{ascii(case['text'][:30])}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_token_ids_match_open_clip_on_hard_cases(case):
    ids = tokenize(case["text"], context_length=case["context_length"])
    assert ids[0].tolist() == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_decode_matches_open_clip_decode_of_the_content_tokens(case):
    assert decode(np.asarray(case["ids"])) == case["decoded"]


def test_batch_of_texts_gives_int64_rows_of_context_length():
    texts = [case["text"] for case in CASES]
    ids = tokenize(texts)
    assert ids.dtype == np.int64
    assert ids.shape == (len(texts), DEFAULT_CONTEXT_LENGTH)
    assert ids.tolist() == [tokenize(t)[0].tolist() for t in texts]


def test_single_string_gives_one_row_and_empty_list_gives_none():
    assert tokenize("a cat").shape == (1, DEFAULT_CONTEXT_LENGTH)
    assert tokenize([]).shape == (0, DEFAULT_CONTEXT_LENGTH)


def test_rows_start_with_sot_end_with_eot_then_zero_padding():
    row = tokenize("a photo of a cat")[0]
    eot = int(np.argmax(row == EOT_TOKEN_ID))
    assert row[0] == SOT_TOKEN_ID
    assert eot == 1 + len(TOKENIZER.encode("a photo of a cat"))
    assert not row[eot + 1 :].any()


@pytest.mark.parametrize("context_length", [2, 5, 16, 77])
def test_truncation_keeps_the_first_tokens_and_eot_last(context_length):
    text = "word " * 100
    full = [SOT_TOKEN_ID, *TOKENIZER.encode(text)]
    row = tokenize(text, context_length=context_length)[0]
    assert row.tolist() == full[: context_length - 1] + [EOT_TOKEN_ID]


def test_context_length_shorter_than_the_two_specials_is_rejected():
    with pytest.raises(ValueError, match="context_length"):
        tokenize("a cat", context_length=1)


def test_special_token_ids_are_those_of_clip():
    tokenizer = TOKENIZER
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (SOT_TOKEN_ID, EOT_TOKEN_ID) == (49406, 49407)
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert tokenizer.decoder[SOT_TOKEN_ID] == "<start_of_text>"
    assert tokenizer.decoder[EOT_TOKEN_ID] == "<end_of_text>"


@pytest.mark.parametrize(
    "text", ["a photo of a cat.", "it's a dog's life!", "Crème brûlée", "一只猫坐在垫子上", "family 👨‍👩‍👧‍👦 🇯🇵"]
)
def test_decoded_text_tokenizes_back_to_the_same_ids(text):
    ids = tokenize(text)[0]
    assert tokenize(decode(ids))[0].tolist() == ids.tolist()


def test_decode_keeps_token_zero_before_eot_and_drops_padding():
    tokenizer = TOKENIZER
    assert tokenizer.decoder[0] == "!"
    assert decode([SOT_TOKEN_ID, 0, 320, EOT_TOKEN_ID, 0, 0]) == "!a "


def test_tokenizers_share_the_vocabulary_read_once_per_process():
    assert SimpleTokenizer().encoder is TOKENIZER.encoder


def test_a_new_tokenizer_gives_the_same_ids_as_another():
    texts = [case["text"] for case in CASES]
    assert (SimpleTokenizer()(texts) == tokenize(texts)).all()


def test_every_consumer_gets_the_tokenizer_the_model_config_names(tmp_path):
    config = AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-32")
    tokenizer = get_tokenizer(config, context_length=16)
    assert isinstance(tokenizer, SimpleTokenizer) and tokenizer.context_length == 16
    assert get_tokenizer("paddlemix/CLIP/ViT-B-32").context_length == config.text_cfg.context_length
    config.text_cfg.tokenizer = "no-such-tokenizer"
    with pytest.raises(ValueError, match="text_cfg.tokenizer 'no-such-tokenizer' is not a known tokenizer"):
        get_tokenizer(config)
    with pytest.raises(ValueError, match="exceeds the model's 77"):
        get_tokenizer("paddlemix/CLIP/ViT-B-32", context_length=78)


def test_ascii_text_skipping_ftfy_is_cleaned_as_ftfy_would():
    """The fast path bypasses ftfy for printable ASCII without '&'; ftfy must leave such text alone."""
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + string.punctuation.replace("&", "") + " \t\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        open_clip_cleaned = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
        assert clean_text(text) == open_clip_cleaned
