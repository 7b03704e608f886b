"""Tokenizers read from transformers' files: the CLIP text towers that are pretrained language models
(RoBERTa, XLM-RoBERTa, BERT) and SigLIP's (T5's SentencePiece vocabulary) and SigLIP 2's (Gemma's).

`HFTokenizer.from_folder(folder)` reads the tokenizer files that transformers' `save_pretrained` (or the
Hugging Face hub) leaves in a checkpoint folder and gives the ids of transformers'
`AutoTokenizer.from_pretrained(folder)`, built with the `tokenizers` package (transformers' fast
backend) without transformers or torch:

- tokenizer.json when present (it *is* transformers' fast tokenizer), with the tokenizer_config.json
  settings that transformers lets override it;
- otherwise the slow files, converted as transformers' convert_slow_tokenizer.py converts them:
  vocab.json + merges.txt (RoBERTa's byte-level BPE), sentencepiece.bpe.model (XLM-RoBERTa's Unigram
  model, with fairseq's ids), vocab.txt (BERT's WordPiece), spiece.model (T5's Unigram model, and
  SiglipTokenizer's, a slow-only class that transformers never reads from tokenizer.json). Gemma's
  tokenizer.model (BPE) is not converted: its folders need tokenizer.json.
"""

import html
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import ftfy
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..utils.tokenizer_files import copy_tokenizer_files
from .constants import DEFAULT_CONTEXT_LENGTH

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
LEGACY_ADDED_TOKENS = "added_tokens.json"
ROBERTA_VOCAB, ROBERTA_MERGES = "vocab.json", "merges.txt"
XLM_ROBERTA_MODEL = "sentencepiece.bpe.model"
BERT_VOCAB = "vocab.txt"
T5_MODEL = "spiece.model"
GEMMA_MODEL = "tokenizer.model"
EXPECTED_FILES = (
    f"{TOKENIZER_JSON}, or the slow files: {ROBERTA_VOCAB} + {ROBERTA_MERGES} (RoBERTa), "
    f"{XLM_ROBERTA_MODEL} (XLM-RoBERTa), {BERT_VOCAB} (BERT) or {T5_MODEL} (T5, SigLIP), with "
    f"{TOKENIZER_CONFIG}, as transformers' save_pretrained writes them"
)
CLEAN_MODES = (None, "whitespace", "canonicalize")
# transformers' SPECIAL_TOKENS_ATTRIBUTES order, in which it adds the special tokens a config leaves out.
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_SENTENCEPIECE_UNIGRAM, _SENTENCEPIECE_CONTROL, _SENTENCEPIECE_USER_DEFINED = 1, 3, 4


@dataclass(frozen=True)
class Family:
    """What transformers' tokenizer class of one model family assumes when the folder does not say."""

    name: str
    class_names: Tuple[str, ...]
    special_tokens: Dict[str, str]  # attribute -> token, the class's defaults
    special_tokens_normalized: bool  # the AddedToken flag transformers gives them (the mask token: False)
    mask_lstrip: bool  # the mask token swallows the space before it
    slow_clean_up_tokenization_spaces: bool  # the slow class's default (the fast classes' is False)
    # The attributes naming the tokens a row starts with (None: the text) and ends with; Gemma's only where
    # its config's add_bos_token / add_eos_token switch them on (_gemma_template_ends).
    start_token: Optional[str] = "cls_token"
    end_token: str = "sep_token"


_FAIRSEQ_SPECIALS = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", pad_token="<pad>",
                         cls_token="<s>", mask_token="<mask>")
ROBERTA = Family("roberta", ("RobertaTokenizer", "RobertaTokenizerFast"), _FAIRSEQ_SPECIALS, True, True, False)
XLM_ROBERTA = Family("xlm_roberta", ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast"), _FAIRSEQ_SPECIALS,
                     False, True, False)
BERT = Family("bert", ("BertTokenizer", "BertTokenizerFast"),
              dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]"),
              False, False, True)
# Rows of "text </s>" (T5, SigLIP) or, as SigLIP 2's config asks, "text <eos>".
T5 = Family("t5", ("T5Tokenizer", "T5TokenizerFast"), dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
            False, False, False, start_token=None, end_token="eos_token")
SIGLIP = Family("siglip", ("SiglipTokenizer",), dict(eos_token="</s>", unk_token="<unk>", pad_token="</s>"),
                False, False, False, start_token=None, end_token="eos_token")
GEMMA = Family("gemma", ("GemmaTokenizer", "GemmaTokenizerFast"),
               dict(bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"),
               False, False, False, start_token="bos_token", end_token="eos_token")
FAMILIES = (ROBERTA, XLM_ROBERTA, BERT, T5, SIGLIP, GEMMA)
# BertTokenizer's defaults, which transformers applies over tokenizer.json's normalizer.
BERT_NORMALIZER_DEFAULTS = dict(do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True)


def clean_whitespace(text: str) -> str:
    """open_clip's HFTokenizer cleaning (clean="whitespace"): ftfy, HTML-unescape twice, collapse whitespace."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split())


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_canonicalize(text: str) -> str:
    """open_clip's clean="canonicalize" (SigLIP's configs; big_vision's canonicalize_text): clean_whitespace's
    fixes, then underscores to spaces, ASCII punctuation removed, lower case, whitespace collapsed."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).replace("_", " ")
    return " ".join(text.translate(_NO_PUNCTUATION).lower().split())


_CLEANERS = {"whitespace": clean_whitespace, "canonicalize": clean_canonicalize}


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop the spaces its decoders leave before punctuation."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); "
                         f"write it again with transformers' save_pretrained") from err


def _token_content(value) -> Optional[str]:
    """A special token as configs spell it: a string, or an AddedToken dict with its "content"."""
    return value.get("content") if isinstance(value, dict) else value


def _detect_family(folder: Path, config: dict) -> Family:
    class_name = config.get("tokenizer_class")
    if class_name:
        for family in FAMILIES:
            if class_name in family.class_names:
                return family
        supported = ", ".join(name for family in FAMILIES for name in family.class_names)
        raise ValueError(f"{folder / TOKENIZER_CONFIG} names tokenizer_class {class_name!r}; "
                         f"paddlemix reads {supported}")
    if (folder / XLM_ROBERTA_MODEL).is_file():
        return XLM_ROBERTA
    if (folder / ROBERTA_VOCAB).is_file() and (folder / ROBERTA_MERGES).is_file():
        return ROBERTA
    if (folder / BERT_VOCAB).is_file():
        return BERT
    if (folder / T5_MODEL).is_file():
        return T5
    if (folder / GEMMA_MODEL).is_file():
        return GEMMA
    if (folder / TOKENIZER_JSON).is_file():
        raise ValueError(f"{folder} has {TOKENIZER_JSON} but neither a {TOKENIZER_CONFIG} naming its tokenizer_class "
                         f"nor slow files that tell the model family; expected {EXPECTED_FILES}")
    raise FileNotFoundError(f"{folder} holds no tokenizer files; expected {EXPECTED_FILES}")


def _special_token_names(family: Family, config: dict) -> Dict[str, str]:
    """Special tokens by attribute: the class defaults, overridden by tokenizer_config.json.

    special_tokens_map.json is not read: transformers writes the same names into tokenizer_config.json.
    """
    names = dict(family.special_tokens)
    for attribute in SPECIAL_TOKEN_ATTRIBUTES:
        if config.get(attribute):
            names[attribute] = _token_content(config[attribute])
    return names


def _added_tokens(folder: Path, family: Family, config: dict, names: Dict[str, str]) -> List[AddedToken]:
    """The added tokens transformers registers: the config's `added_tokens_decoder`, then the special tokens
    it leaves out with the class's flags."""
    if "added_tokens_decoder" not in config and (folder / LEGACY_ADDED_TOKENS).is_file():
        raise ValueError(f"{folder / LEGACY_ADDED_TOKENS} is transformers' pre-4.34 added-token format, which "
                         f"paddlemix does not read; load the folder with transformers and save_pretrained it again")
    decoder = sorted(config.get("added_tokens_decoder", {}).items(), key=lambda item: int(item[0]))
    tokens = [AddedToken(**spec) for _, spec in decoder]
    contents = {token.content for token in tokens}
    for attribute in SPECIAL_TOKEN_ATTRIBUTES:
        content = names.get(attribute)
        if content is None or content in contents:
            continue
        is_mask = attribute == "mask_token"
        tokens.append(AddedToken(content, lstrip=is_mask and family.mask_lstrip, rstrip=False, single_word=False,
                                 normalized=family.special_tokens_normalized and not is_mask, special=True))
        contents.add(content)
    return tokens


def _vocab_id(vocab: Dict[str, int], token: str, path: Path) -> int:
    if token not in vocab:
        raise ValueError(f"{path} lacks the special token {token!r}; set the tokenizer_config.json entry that "
                         f"names it to a token of the vocabulary")
    return vocab[token]


def _read_roberta(folder: Path, config: dict, names: Dict[str, str]) -> Tokenizer:
    """transformers' RobertaConverter over vocab.json + merges.txt."""
    vocab = _read_json(folder / ROBERTA_VOCAB)
    merges_path = folder / ROBERTA_MERGES
    # RobertaTokenizer drops the first line (the "#version" header) and the last (empty after the final newline).
    merges = [tuple(line.split()) for line in merges_path.read_text(encoding="utf-8").split("\n")[1:-1]]
    for number, merge in enumerate(merges, start=2):
        if len(merge) != 2:
            raise ValueError(f"{merges_path} line {number} is not a merge of two symbols: {' '.join(merge)!r}")
    try:
        model = models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                           end_of_word_suffix="", fuse_unk=False)
    except Exception as err:  # tokenizers raises plain Exception on inconsistent files
        raise ValueError(f"{merges_path} does not fit {folder / ROBERTA_VOCAB}: {err}") from err
    tokenizer = Tokenizer(model)
    add_prefix_space = config.get("add_prefix_space", False)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    cls, sep = names["cls_token"], names["sep_token"]
    tokenizer.post_processor = processors.RobertaProcessing(
        sep=(sep, _vocab_id(vocab, sep, folder / ROBERTA_VOCAB)),
        cls=(cls, _vocab_id(vocab, cls, folder / ROBERTA_VOCAB)),
        add_prefix_space=add_prefix_space, trim_offsets=True,
    )
    return tokenizer


def _read_sentencepiece_proto(path: Path, family: str):
    """The Unigram model of a slow sentencepiece file (XLM-R's, T5's); `family` names whose, for the errors."""
    # Only the slow sentencepiece files need sentencepiece's protobuf schema (and protobuf itself).
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise ValueError(f"{path} is not a sentencepiece model ({err}); copy it again from the checkpoint") from err
    if not proto.pieces:
        raise ValueError(f"{path} is not a sentencepiece model (it has no pieces); copy it again from the checkpoint")
    if proto.trainer_spec.model_type != _SENTENCEPIECE_UNIGRAM:
        raise ValueError(f"{path} is a sentencepiece model of type {proto.trainer_spec.model_type}, but {family}'s "
                         f"is Unigram (1); add the checkpoint's {TOKENIZER_JSON} to {path.parent}")
    return proto


def _sentencepiece_added_tokens(proto) -> List[AddedToken]:
    """SpmConverter's added tokens: the model's control pieces (special) and user-defined pieces (not)."""
    return [AddedToken(piece.piece, normalized=False, special=piece.type == _SENTENCEPIECE_CONTROL)
            for piece in proto.pieces if piece.type in (_SENTENCEPIECE_CONTROL, _SENTENCEPIECE_USER_DEFINED)]


def _sentencepiece_normalizers(proto) -> list:
    """SpmConverter's normalizer: the model's character map, trailing spaces stripped, space runs kept as "▁"."""
    charsmap = proto.normalizer_spec.precompiled_charsmap
    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    return [normalizers.Precompiled(charsmap), *steps] if charsmap else steps


def _end_of_text_template(token: str, token_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"$A {token}", pair=f"$A {token} $B {token}",
                                         special_tokens=[(token, token_id)])


def _read_xlm_roberta(folder: Path, config: dict, names: Dict[str, str]) -> Tokenizer:
    """transformers' XLMRobertaConverter over sentencepiece.bpe.model (a Unigram model despite its name)."""
    proto = _read_sentencepiece_proto(folder / XLM_ROBERTA_MODEL, "XLM-RoBERTa")
    # fairseq's ids: <s> <pad> </s> <unk>, then sentencepiece's pieces after its own <unk> <s> </s>, then <mask>.
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]] + [("<mask>", 0.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, 3, False))
    tokenizer.add_tokens(_sentencepiece_added_tokens(proto))
    tokenizer.normalizer = normalizers.Sequence(_sentencepiece_normalizers(proto))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


def _read_t5(folder: Path, config: dict, names: Dict[str, str]) -> Tokenizer:
    """transformers' T5Converter over spiece.model: what T5TokenizerFast builds when it has no tokenizer.json."""
    path = folder / T5_MODEL
    proto = _read_sentencepiece_proto(path, "T5")
    extra_ids = config.get("extra_ids", 100)  # T5Tokenizer's default: <extra_id_99> ... <extra_id_0> after the pieces
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    tokenizer = Tokenizer(models.Unigram(vocab, proto.trainer_spec.unk_id, False))
    tokenizer.add_tokens(_sentencepiece_added_tokens(proto))
    tokenizer.normalizer = normalizers.Sequence(_sentencepiece_normalizers(proto))
    # T5TokenizerFast hands the config's add_prefix_space (None unless set) to the slow class it converts, and
    # the converter puts "▁" before the first word only when that is true.
    prepend = ("always" if config.get("legacy", True) else "first") if config.get("add_prefix_space") else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    # The converter closes rows with "</s>" whatever eos_token says.
    tokenizer.post_processor = _end_of_text_template("</s>", _vocab_id(tokenizer.get_vocab(), "</s>", path))
    return tokenizer


# Python's str.isspace characters (SiglipTokenizer's re.sub(r"\s+", ...)), all below U+3001.
_PYTHON_WHITESPACE = "".join(chr(code) for code in range(0x3001) if chr(code).isspace())


def _read_siglip(folder: Path, config: dict, names: Dict[str, str]) -> Tokenizer:
    """transformers' SiglipTokenizer, a slow-only class, over spiece.model: lower case (do_lower_case), its
    canonicalize_text (punctuation removed, whitespace collapsed and stripped), then sentencepiece on "▁" + text
    without the dummy prefix. Checked on open_clip-canonicalized text, which every SigLIP model feeds it."""
    path = folder / T5_MODEL
    proto = _read_sentencepiece_proto(path, "SigLIP")
    tokenizer = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id, False))
    tokenizer.add_tokens(_sentencepiece_added_tokens(proto))
    steps = [normalizers.Replace("▁", " ")]
    if config.get("do_lower_case", True):
        steps.append(normalizers.Lowercase())
    steps += [normalizers.Replace(Regex(f"[{re.escape(string.punctuation)}]"), ""),
              normalizers.Replace(Regex(f"[{_PYTHON_WHITESPACE}]+"), " "), normalizers.Strip()]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    # sentencepiece's remove_extra_whitespaces, then the "▁" SiglipTokenizer.tokenize puts first (none on "").
    steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Prepend("▁")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")  # and strip_decoded
    eos = names["eos_token"]
    tokenizer.post_processor = _end_of_text_template(eos, _vocab_id(tokenizer.get_vocab(), eos, path))
    return tokenizer


def _gemma_template_ends(config: dict) -> Tuple[bool, bool]:
    """Whether Gemma's rows start with bos and end with eos: the config's add_bos_token and add_eos_token,
    GemmaTokenizerFast's defaults (True, False) where it has none."""
    return config.get("add_bos_token", True), config.get("add_eos_token", False)


def _gemma_post_processor(folder: Path, tokenizer: Tokenizer, config: dict,
                          names: Dict[str, str]) -> processors.TemplateProcessing:
    """GemmaTokenizerFast.update_post_processor: _gemma_template_ends decide the template, whatever
    tokenizer.json holds."""
    ends = list(zip((names["bos_token"], names["eos_token"]), _gemma_template_ends(config)))
    vocab = tokenizer.get_vocab()
    special_tokens = [(token, _vocab_id(vocab, token, folder / TOKENIZER_JSON)) for token, on in ends if on]
    (bos, add_bos), (eos, add_eos) = ends
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)


def _bert_normalizer_options(config: dict) -> dict:
    options = {key: config.get(key, default) for key, default in BERT_NORMALIZER_DEFAULTS.items()}
    return dict(lowercase=options["do_lower_case"], strip_accents=options["strip_accents"],
                handle_chinese_chars=options["tokenize_chinese_chars"])


def _read_bert(folder: Path, config: dict, names: Dict[str, str]) -> Tokenizer:
    """transformers' BertConverter over vocab.txt."""
    # BertTokenizer's load_vocab: one token per line, numbered from 0; a repeated token keeps its last line.
    with open(folder / BERT_VOCAB, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): index for index, line in enumerate(f.readlines())}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=names["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, **_bert_normalizer_options(config))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = names["cls_token"], names["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(token, _vocab_id(vocab, token, folder / BERT_VOCAB)) for token in (cls, sep)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _read_tokenizer_json(folder: Path, family: Family, config: dict) -> Tokenizer:
    """tokenizer.json, with the config settings transformers' fast classes apply over it."""
    path = folder / TOKENIZER_JSON
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception on a malformed file
        raise ValueError(f"{path} is not a tokenizer.json that tokenizers can read ({err}); "
                         f"write it again with transformers' save_pretrained") from err
    # PreTrainedTokenizerFast: the config's add_prefix_space (default False) wins over the pre-tokenizer's.
    if tokenizer.pre_tokenizer is not None:
        state = json.loads(tokenizer.pre_tokenizer.__getstate__())
        add_prefix_space = config.get("add_prefix_space", False)
        if state.get("add_prefix_space", add_prefix_space) != add_prefix_space:
            state["add_prefix_space"] = add_prefix_space
            tokenizer.pre_tokenizer = getattr(pre_tokenizers, state.pop("type"))(**state)
    # BertTokenizerFast: the config's (or BertTokenizer's default) case, accent and CJK options win.
    if family is BERT and tokenizer.normalizer is not None:
        state = json.loads(tokenizer.normalizer.__getstate__())
        options = _bert_normalizer_options(config)
        if any(state.get(key, value) != value for key, value in options.items()):
            state.update(options)
            tokenizer.normalizer = getattr(normalizers, state.pop("type"))(**state)
    return tokenizer


# family name -> (the slow files, and the reader converting them as transformers does; None: tokenizer.json only)
_SLOW_FILES = {
    ROBERTA.name: ((ROBERTA_VOCAB, ROBERTA_MERGES), _read_roberta),
    XLM_ROBERTA.name: ((XLM_ROBERTA_MODEL,), _read_xlm_roberta),
    BERT.name: ((BERT_VOCAB,), _read_bert),
    T5.name: ((T5_MODEL,), _read_t5),
    SIGLIP.name: ((T5_MODEL,), _read_siglip),
    GEMMA.name: ((GEMMA_MODEL,), None),
}


def _reads_tokenizer_json(family: Family, config: dict) -> bool:
    """Whether transformers builds this family's tokenizer from tokenizer.json when the folder has one."""
    if family is SIGLIP:
        return False  # a slow-only class
    # T5TokenizerFast converts spiece.model again whenever the config sets add_prefix_space.
    return not (family is T5 and config.get("add_prefix_space") is not None)


def _template_ends(family: Family, config: dict) -> Tuple[Optional[str], Optional[str]]:
    """The attributes naming the tokens a row starts and ends with (None: no such token)."""
    if family is GEMMA:
        add_bos, add_eos = _gemma_template_ends(config)
        return family.start_token if add_bos else None, family.end_token if add_eos else None
    return family.start_token, family.end_token


def _read_folder(folder: Path, families: Optional[Sequence[str]] = None):
    """(tokenizer, {"pad": id, "sot": id or None, "eot": id or None}, HFTokenizer's decode options) for a
    checkpoint folder; `families`, when given, name the families (Family.name) the caller's model can read."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the checkpoint folder holding {EXPECTED_FILES}")
    config = _read_json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
    family = _detect_family(folder, config)
    if families is not None and family.name not in families:
        expected = ", ".join(name for known in FAMILIES if known.name in families for name in known.class_names)
        raise ValueError(f"{folder} holds a {family.name} tokenizer ({', '.join(family.class_names)}), but this "
                         f"model reads {expected}; put the tokenizer files of the model's own checkpoint there")
    names = _special_token_names(family, config)
    for side in ("padding_side", "truncation_side"):
        if config.get(side, "right") != "right":
            raise ValueError(f"{folder / TOKENIZER_CONFIG} sets {side}={config[side]!r}; CLIP's text towers read "
                             f"right-padded, right-truncated rows, so set it to \"right\"")
    reads_json = (folder / TOKENIZER_JSON).is_file() and _reads_tokenizer_json(family, config)
    if reads_json:
        tokenizer = _read_tokenizer_json(folder, family, config)
    else:
        slow_files, reader = _SLOW_FILES[family.name]
        missing = [name for name in slow_files if not (folder / name).is_file()]
        if reader is None:
            raise FileNotFoundError(f"{folder} lacks {TOKENIZER_JSON} for its {family.name} tokenizer (paddlemix does "
                                    f"not convert {' and '.join(slow_files)}); expected {TOKENIZER_JSON} + "
                                    f"{TOKENIZER_CONFIG}, as transformers' save_pretrained writes them")
        if missing:
            raise FileNotFoundError(f"{folder} lacks {' and '.join(missing)} for its {family.name} tokenizer; "
                                    f"expected {EXPECTED_FILES}")
        tokenizer = reader(folder, config, names)
    if family is GEMMA:
        tokenizer.post_processor = _gemma_post_processor(folder, tokenizer, config, names)
    existing = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    tokenizer.add_tokens([t for t in _added_tokens(folder, family, config, names) if t.content not in existing])
    for index, spec in config.get("added_tokens_decoder", {}).items():
        actual = tokenizer.token_to_id(spec["content"])
        if actual != int(index):
            raise ValueError(f"{folder / TOKENIZER_CONFIG} puts {spec['content']!r} at id {index}, but the vocabulary "
                             f"gives it {actual}; the tokenizer files do not belong together")
    # Every special token is in the vocabulary or an added token by now, as transformers makes it.
    start, end = _template_ends(family, config)
    special_ids = {key: tokenizer.token_to_id(names[attribute]) if attribute else None
                   for key, attribute in (("pad", "pad_token"), ("sot", start), ("eot", end))}
    # A config without the option gets the slow class's default only when transformers converts slow files.
    clean_up_default = family.slow_clean_up_tokenization_spaces and not reads_json
    decode_options = dict(clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", clean_up_default),
                          strip_decoded=family is SIGLIP)  # SiglipTokenizer.convert_tokens_to_string strips
    return tokenizer, special_ids, decode_options


class HFTokenizer:
    """Text -> token ids of a RoBERTa / XLM-RoBERTa / BERT / SigLIP text tower, and back, as transformers gives
    them.

    Build it with `from_folder`. Calls return numpy int64 arrays, so the text side needs neither torch
    nor paddle; instances pickle (DataLoader workers receive them).

    Args:
        tokenizer: the `tokenizers.Tokenizer` (normaliser, model, special-token template and decoder).
        pad_token_id / sot_token_id / eot_token_id: ids of the pad token and of the tokens the template puts
            first (<s> / [CLS]; None for T5 and SigLIP, whose rows start with the text) and last (</s> / [SEP]).
        context_length: row length of `__call__`'s output when the call does not give one.
        clean: None (transformers' behaviour), "whitespace" (open_clip's HFTokenizer default: ftfy, HTML
            unescape, whitespace collapsed) or "canonicalize" (the SigLIP configs': also punctuation removed and
            lower case), applied before tokenizing.
        clean_up_tokenization_spaces: whether `decode` joins punctuation as transformers' option does.
        strip_decoded: whether `decode` strips the text's ends (the slow SiglipTokenizer does).
    """

    def __init__(self, tokenizer: Tokenizer, pad_token_id: int, sot_token_id: Optional[int],
                 eot_token_id: Optional[int], context_length: int = DEFAULT_CONTEXT_LENGTH, clean: Optional[str] = None,
                 clean_up_tokenization_spaces: bool = False, strip_decoded: bool = False):
        if clean not in CLEAN_MODES:
            raise ValueError(f"clean must be one of {CLEAN_MODES}, got {clean!r}")
        tokenizer.no_truncation()  # `__call__` truncates to its context length, `encode` not at all
        tokenizer.no_padding()  # `__call__` pads to its context length
        self._tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.sot_token_id = sot_token_id
        self.eot_token_id = eot_token_id
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.context_length = context_length
        self.clean = clean
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.strip_decoded = strip_decoded
        self._num_special_tokens = tokenizer.num_special_tokens_to_add(is_pair=False)
        self.folder: Optional[Path] = None  # the checkpoint folder it was read from

    def save_pretrained(self, directory: Union[str, Path]) -> List[str]:
        """Copy the tokenizer files it was read from into `directory` (beside a model's weights, so the
        folder stays loadable on its own); the names copied."""
        return copy_tokenizer_files(self.folder, directory) if self.folder is not None else []

    @classmethod
    def from_folder(cls, folder: Union[str, Path], context_length: int = DEFAULT_CONTEXT_LENGTH,
                    clean: Optional[str] = None, families: Optional[Sequence[str]] = None) -> "HFTokenizer":
        """The tokenizer saved in a checkpoint folder (see the module docstring for the files it reads);
        `families`, when given, name the model families (Family.name) whose files the caller accepts."""
        folder = Path(folder)
        tokenizer, special_ids, decode_options = _read_folder(folder, families)
        loaded = cls(tokenizer, special_ids["pad"], special_ids["sot"], special_ids["eot"],
                     context_length=context_length, clean=clean, **decode_options)
        loaded.folder = folder
        return loaded

    def _cleaned(self, text: str) -> str:
        cleaner = _CLEANERS.get(self.clean)
        return cleaner(text) if cleaner else text

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without the special tokens, not truncated."""
        return self._tokenizer.encode(self._cleaned(text), add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids, skipping special tokens and padding (transformers' skip_special_tokens=True)."""
        text = self._tokenizer.decode([int(token) for token in ids], skip_special_tokens=True)
        text = clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text
        return text.strip() if self.strip_decoded else text

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> np.ndarray:
        """Tokenize a string or a list of strings into an int64 array of shape [N, context_length].

        Each row is <s>/[CLS] (T5, SigLIP: none), the ids, </s>/[SEP]/<eos>, then the pad id (SigLIP's is
        </s> itself). Too-long texts lose their last tokens, keeping the closing special token
        (transformers' padding="max_length", truncation=True). Rows are always `context_length` long, never
        padded to the batch's longest text: SigLIP's text tower pools the last position.
        """
        if isinstance(texts, str):
            texts = [texts]
        context_length = context_length or self.context_length
        if context_length < self._num_special_tokens:
            raise ValueError(f"context_length must fit the {self._num_special_tokens} special tokens, "
                             f"got {context_length}")
        encodings = self._tokenizer.encode_batch([self._cleaned(text) for text in texts], add_special_tokens=False)
        result = np.full((len(texts), context_length), self.pad_token_id, dtype=np.int64)
        for row, encoding in zip(result, encodings):
            encoding.truncate(context_length - self._num_special_tokens)
            ids = self._tokenizer.post_process(encoding).ids
            row[: len(ids)] = ids
        return result
