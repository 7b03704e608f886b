"""CLIP's byte-level BPE tokenizer, a port of OpenAI CLIP's / open_clip's `SimpleTokenizer`.

Gives the same ids as `open_clip.get_tokenizer("ViT-B-32")` (its default `clean="lower"` path) and
returns numpy int64 arrays, so the text side needs neither torch nor paddle.
"""

import gzip
import html
import math
import os
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex

from .constants import DEFAULT_CONTEXT_LENGTH, VOCAB_SIZE

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")

# Same pattern as CLIP: the specials, English contractions, letter runs, single digits, other symbol runs.
_WORD_PATTERN = regex.compile(
    "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# ftfy is most of the cleaning cost and leaves printable ASCII without "&" untouched (it only
# rewrites HTML entities, control characters, "\r" and non-ASCII), so such text skips it.
_FTFY_INVARIANT = regex.compile(r"[\x20-\x25\x27-\x7e\t\n]*")
# Distinct words seen before the word cache is emptied; bounds memory over a long training run.
_MAX_CACHED_WORDS = 1_000_000


@lru_cache()
def bytes_to_unicode() -> Dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character (CLIP's reversible byte alphabet).

    Printable Latin-1 bytes map to themselves; the rest are shifted above U+0100 so that BPE never sees
    whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_values, code_points = list(printable), list(printable)
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + len(code_points) - len(printable))
    return dict(zip(byte_values, map(chr, code_points)))


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy fixes, HTML-unescape twice, collapse whitespace, lower-case."""
    if not _FTFY_INVARIANT.fullmatch(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _merge_lowest_ranked_pairs(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Greedy BPE: repeatedly merge every occurrence of the adjacent pair with the lowest merge rank."""
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break
        first, second = best
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class SimpleTokenizer:
    """Text -> CLIP token ids, and back.

    Args:
        bpe_path: gzipped merge list (CLIP's `bpe_simple_vocab_16e6.txt.gz` by default).
        context_length: row length of `__call__`'s output when the call does not give one.
    """

    def __init__(self, bpe_path: str = DEFAULT_BPE_PATH, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.encoder, self.decoder, self.bpe_ranks = _read_vocabulary(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]
        self.pad_token_id = 0
        self.vocab_size = len(self.encoder)
        self.context_length = context_length
        self._word_cache: Dict[str, Tuple[int, ...]] = {}

    def save_pretrained(self, directory) -> List[str]:
        """Nothing to write: CLIP's vocabulary ships with paddlemix (the trainer saves every model's
        tokenizer beside its weights, as PaddleNLP's Trainer does)."""
        return []

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        """Ids of one regex word; the specials stay whole, as in CLIP."""
        ids = self._word_cache.get(word)
        if ids is not None:
            return ids
        if word in SPECIAL_TOKENS:
            ids = (self.encoder[word],)
        else:
            symbols = [self.byte_encoder[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            ids = tuple(self.encoder[s] for s in _merge_lowest_ranked_pairs(symbols, self.bpe_ranks))
        if len(self._word_cache) >= _MAX_CACHED_WORDS:
            self._word_cache.clear()
        self._word_cache[word] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without <start_of_text>/<end_of_text> or padding."""
        ids: List[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids, as open_clip's `decode` spells it (each word followed by a space).

        A leading <start_of_text> is skipped and decoding stops at the first <end_of_text>, which drops
        the padding after it; zeros before it are kept because id 0 is also the token "!".
        """
        ids = [int(token) for token in ids]
        if ids and ids[0] == self.sot_token_id:
            ids = ids[1:]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        raw = bytearray(self.byte_decoder[c] for c in "".join(self.decoder[token] for token in ids))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> np.ndarray:
        """Tokenize a string or a list of strings into an int64 array of shape [N, context_length].

        Each row is <start_of_text>, the ids, <end_of_text>, then zeros. Too-long rows are cut to
        `context_length` with <end_of_text> kept in the last position, as open_clip does.
        """
        if isinstance(texts, str):
            texts = [texts]
        context_length = context_length or self.context_length
        if context_length < 2:
            raise ValueError(f"context_length must fit <start_of_text> and <end_of_text> (>= 2), got {context_length}")
        result = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in zip(result, texts):
            ids = [self.sot_token_id, *self.encode(text)][: context_length - 1]
            ids.append(self.eot_token_id)
            row[: len(ids)] = ids
        return result


@lru_cache(maxsize=4)
def _read_vocabulary(bpe_path: str) -> Tuple[Dict[str, int], Dict[int, str], Dict[Tuple[str, str], int]]:
    """(symbol -> id, id -> symbol, merge -> rank) of a gzipped merge list; read once per file (about a
    second), shared by the tokenizers built from it."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is a version header; CLIP uses exactly the first 48894 merges.
    num_merges = VOCAB_SIZE - 2 * 256 - len(SPECIAL_TOKENS)
    merges = [tuple(line.split()) for line in lines[1 : num_merges + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
    return ({symbol: i for i, symbol in enumerate(vocab)}, dict(enumerate(vocab)),
            {merge: rank for rank, merge in enumerate(merges)})
