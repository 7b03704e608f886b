"""LAION part files in PaddleMIX's format, streamed (see `streaming.StreamingDataset`).

A part file has one sample per line, tab-separated: field 1 is a JSON object whose caption is
`caption_en`, else `blip_caption_en`; field 4 is the base64-encoded image. Lines are UTF-8, else
gb18030 (the Chinese parts). Parts may be gzipped (`.gz`).

Bad lines are skipped and counted under `samples.REASONS`; a malformed line is named after the
first thing it lacks, checked in this order:
  - bytes that are neither UTF-8 nor gb18030            -> invalid_utf8
  - fewer than 2 fields, field 1 not a JSON object, or
    neither caption key holding a non-blank string     -> empty_caption (the caption is missing)
  - fewer than 5 fields, or field 4 not valid base64    -> bad_base64 (the image field does not decode)
  - decoded bytes that are empty / not an image / cut
    short / smaller than MIN_IMAGE_SIDE                 -> empty_file / not_an_image /
                                                           truncated_image / tiny_image (decode_image)
A blank line is a line with too few fields, so it counts as empty_caption.
"""

import base64
import binascii
import gzip
import json
import os
import zlib
from typing import Callable, Iterator, List, Optional, Union

from .samples import BadSample, clean_caption, decode_text
from .streaming import Record, StreamingDataset

CAPTION_KEYS = ("caption_en", "blip_caption_en")  # PaddleMIX's LAION parts: English caption, else BLIP's
CAPTION_FIELD, IMAGE_FIELD = 1, 4


def parse_laion_line(line: bytes, where: str) -> Union[Record, BadSample]:
    """One part-file line -> its (still encoded) image and caption, or why it is bad (see module doc)."""
    text = decode_text(line, where, fallback="gb18030")
    if isinstance(text, BadSample):
        return text
    fields = text.rstrip("\r\n").split("\t")
    try:
        meta = json.loads(fields[CAPTION_FIELD])
    except (IndexError, json.JSONDecodeError):
        return BadSample("empty_caption", where)
    if not isinstance(meta, dict):
        return BadSample("empty_caption", where)
    captions = [clean_caption(meta.get(key), where) for key in CAPTION_KEYS]
    caption = next((text for text in captions if isinstance(text, str)), captions[0])
    if isinstance(caption, BadSample):
        return caption
    try:
        image = base64.b64decode(fields[IMAGE_FIELD].strip(), validate=True)
    except (IndexError, binascii.Error):
        return BadSample("bad_base64", where)
    return Record(image, caption, where)


def read_filelist(filelist: str) -> List[str]:
    """Part-file paths listed one per line; relative ones resolve against the filelist's folder.

    Blank lines and lines starting with '#' are ignored; a listed file that does not exist is an error.
    """
    base = os.path.dirname(os.path.abspath(filelist))
    parts = []
    with open(filelist, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = os.path.join(base, entry)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{filelist}:{number}: part file {entry!r} does not exist (looked for {path})")
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
        opener = gzip.open if path.endswith(".gz") else open
        lines_read = 0
        with opener(path, "rb") as handle:
            try:
                for lines_read, line in enumerate(handle, start=1):
                    if keep(lines_read - 1):
                        yield parse_laion_line(line, f"{path}:{lines_read}")
            except (OSError, EOFError, zlib.error) as error:  # a damaged .gz; its errors name no file
                raise OSError(f"{path}: damaged after line {lines_read}: {error}") from error
