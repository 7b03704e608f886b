"""LAION part files in PaddleMIX's format, streamed (see `streaming.StreamingDataset`).

The format is the one PaddleMIX's `paddlemix/datasets/laiondata.py` reads (`LaionDataset.parse_line`):
one sample per line, tab-separated; field 2 is a JSON object whose caption is `caption_en`, else
`blip_caption_en`; field 5 is the base64-encoded image; the other fields are not read. Lines end at
b"\\n" and are UTF-8, else gb18030 (the Chinese parts); a part whose name ends in `.gz` is gzipped.
As in PaddleMIX, the whole line is stripped of surrounding whitespace before it is split (so an
empty field 0 shifts the fields, there as here), the base64 is decoded without validation
(characters outside the alphabet are dropped) and an image must be at least MIN_IMAGE_SIDE (5) pixels
a side. `tests/fixtures/make_laion_fixtures.py` checks the test part line by line against PaddleMIX's
own reader.

A filelist names the part files, one per line (blank lines and '#' lines ignored). A relative path
is looked for in the current directory first, as PaddleMIX does, then next to the filelist.

Bad lines are skipped and counted under `samples.REASONS`; a malformed line is named after the
first thing it lacks, checked in this order:
  - bytes that are neither UTF-8 nor gb18030            -> invalid_utf8
  - fewer than 3 fields, field 2 not a JSON object, or
    its caption not a non-blank string                  -> empty_caption (the caption is missing)
  - fewer than 6 fields, or field 5 not base64          -> bad_base64 (the image field does not decode)
  - decoded bytes that are empty / not an image / cut
    short / smaller than MIN_IMAGE_SIDE                 -> empty_file / not_an_image /
                                                           truncated_image / tiny_image (decode_image)
A blank line is a line with too few fields, so it counts as empty_caption. A gzipped part that is
cut short or corrupt keeps the lines before the damage; the rest counts once as damaged_part, and a
warning names the part and its last good line.

Deliberate differences from PaddleMIX, each a sample it would train on although it is bad:
  - The caption key is chosen as PaddleMIX chooses it (`caption_en` whenever that key is present),
    but a caption that is blank or not a string (`""`, `null`, a number) is skipped as
    empty_caption; PaddleMIX trains on it (and on "" when neither key is present).
  - Images over PIL's decompression-bomb limit (89M pixels) are skipped as not_an_image; PaddleMIX
    decodes them up to twice that size.
Captions are otherwise yielded exactly as PaddleMIX yields them (surrounding spaces kept).
"""

import base64
import gzip
import json
import os
import zlib
from typing import Callable, Iterator, List, Optional, Tuple, Union

from ..utils.log import logger
from .samples import BadSample, decode_text
from .streaming import Record, StreamingDataset

CAPTION_KEY, FALLBACK_CAPTION_KEY = "caption_en", "blip_caption_en"  # English caption, else BLIP's
CAPTION_FIELD, IMAGE_FIELD = 2, 5  # PaddleMIX's laiondata.py: json.loads(vec[2]), vec[5]


def split_laion_line(text: str) -> List[str]:
    """The fields of a decoded part-file line, split as PaddleMIX splits them (whole line stripped first)."""
    return text.strip().split("\t")


def parse_laion_line(line: bytes, where: str) -> Union[Record, BadSample]:
    """One part-file line -> its (still encoded) image and caption, or why it is bad (see module doc)."""
    text = decode_text(line, where, fallback="gb18030")
    if isinstance(text, BadSample):
        return text
    fields = split_laion_line(text)
    try:
        meta = json.loads(fields[CAPTION_FIELD])
    except (IndexError, ValueError, RecursionError):  # ValueError: bad JSON, or an integer too long to read
        return BadSample("empty_caption", where)
    if not isinstance(meta, dict):
        return BadSample("empty_caption", where)
    caption = meta.get(CAPTION_KEY, meta.get(FALLBACK_CAPTION_KEY))
    if not isinstance(caption, str) or not caption.strip():
        return BadSample("empty_caption", where)
    try:
        image = base64.b64decode(fields[IMAGE_FIELD])  # not validating, as PaddleMIX decodes
    except (IndexError, ValueError):  # ValueError: bad padding, or characters outside ASCII
        return BadSample("bad_base64", where)
    return Record(image, caption, where)


def read_part_lines(path: str) -> Iterator[Tuple[int, Union[bytes, BadSample]]]:
    """(line number from 1, line bytes) of a part file, gunzipped if its name ends in `.gz`.

    A gzipped part that is cut short or corrupt ends with one `damaged_part` BadSample naming the part
    and its last good line (in place of the next line): the lines before the damage are kept.
    """
    opener = gzip.open if path.endswith(".gz") else open
    number = 0
    with opener(path, "rb") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                yield number, line
        except (OSError, EOFError, zlib.error) as error:  # a damaged .gz; its errors name no file
            logger.warning("%s: damaged after line %d (%s); the rest of this part is skipped", path, number, error)
            yield number + 1, BadSample("damaged_part", f"{path}: after line {number}")


def read_filelist(filelist: str) -> List[str]:
    """Part-file paths listed one per line (see module doc for where a relative path is looked for).

    Blank lines and lines starting with '#' are ignored; a listed file that does not exist is an error.
    """
    beside_filelist = os.path.dirname(os.path.abspath(filelist))
    parts = []
    with open(filelist, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            candidates = list(dict.fromkeys([os.path.abspath(entry), os.path.join(beside_filelist, entry)]))
            path = next((candidate for candidate in candidates if os.path.isfile(candidate)), None)
            if path is None:
                raise FileNotFoundError(f"{filelist}:{number}: part file {entry!r} does not exist "
                                        f"(looked for {' and '.join(candidates)})")
            parts.append(path)
    if not parts:
        raise ValueError(f"{filelist} lists no part files")
    return parts


def _count_file(filelist: str) -> Optional[int]:
    path = filelist + ".count"
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} should hold one integer (the number of samples), found {text[:40]!r}") from None


class LaionDataset(StreamingDataset):
    """PaddleMIX LAION part files listed in `filelist`, as an endless sharded stream (see StreamingDataset).

    `num_samples`: the argument, else the integer in `<filelist>.count` if that file exists, else None.
    """

    def __init__(self, filelist: Union[str, os.PathLike], transform: Callable, seed: int = 0,
                 shuffle_buffer: int = 1000, num_samples: Optional[int] = None, epochs: Optional[int] = None):
        filelist = os.fspath(filelist)
        super().__init__(read_filelist(filelist), transform, seed, shuffle_buffer,
                         num_samples if num_samples is not None else _count_file(filelist), epochs)

    def read(self, path: str, keep: Callable[[int], bool]) -> Iterator[Union[Record, BadSample]]:
        for number, line in read_part_lines(path):
            if keep(number - 1):
                yield line if isinstance(line, BadSample) else parse_laion_line(line, f"{path}:{number}")
