"""One image-caption sample, and the ways a web-scale sample can be bad.

Every dataset reads its raw bytes and text through these helpers, so each kind of broken sample
is recognised in one place and reported under one name. A helper returns the decoded value or a
`BadSample` naming what was wrong; datasets pass `BadSample`s on instead of raising.
"""

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Union

from PIL import Image, UnidentifiedImageError

# Why a sample was skipped; these names appear in the logged summaries.
REASONS = (
    "missing_file",
    "empty_file",
    "truncated_image",
    "not_an_image",
    "tiny_image",
    "bad_base64",
    "empty_caption",
    "invalid_utf8",
    "corrupt_tar_member",
    "damaged_part",  # a compressed part cut short or corrupt: the lines after the damage are lost
)
MIN_IMAGE_SIDE = 5  # pixels; smaller images carry no usable content (and break resizes)


@dataclass(frozen=True)
class BadSample:
    reason: str  # one of REASONS
    where: str  # file, line or key, for the log

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {self.reason!r}; known: {', '.join(REASONS)}")


def decode_image(data: bytes, where: str) -> Union[Image.Image, BadSample]:
    """Decoded image from encoded bytes (JPEG, PNG, WebP, ...), or why it cannot be used.

    The image keeps its own mode: the transforms convert to RGB after resizing, as open_clip does
    (PIL resizes RGBA premultiplied, so converting first would change the pixels).
    """
    if not data:
        return BadSample("empty_file", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decodes everything now: a truncated file fails here, not in a worker later
    except UnidentifiedImageError:
        return BadSample("not_an_image", where)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        reason = "truncated_image" if "truncated" in str(error).lower() or "broken" in str(error).lower() else "not_an_image"
        return BadSample(reason, where)
    if min(image.size) < MIN_IMAGE_SIDE:
        return BadSample("tiny_image", where)
    return image


def load_image_file(path: str) -> Union[Image.Image, BadSample]:
    """Decoded image from a file path (see decode_image), or why it cannot be used."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return BadSample("missing_file", path)
    except IsADirectoryError:
        return BadSample("not_an_image", path)
    return decode_image(data, path)


def decode_text(data: bytes, where: str, fallback: str = "") -> Union[str, BadSample]:
    """Bytes as UTF-8 (or the `fallback` codec, e.g. 'gb18030' for LAION's Chinese parts)."""
    for codec in ("utf-8", fallback) if fallback else ("utf-8",):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return BadSample("invalid_utf8", where)


def clean_caption(caption: object, where: str) -> Union[str, BadSample]:
    """The caption stripped of surrounding whitespace; empty or missing captions are bad."""
    if not isinstance(caption, str) or not caption.strip():
        return BadSample("empty_caption", where)
    return caption.strip()


class AllSamplesBadError(RuntimeError):
    """A dataset (or a reader's whole shard) held no usable sample: stop instead of spinning."""


def image_file_sample(path: str, caption: object, transform: Callable) -> Union[Dict, BadSample]:
    """{"image": transform(image), "caption": str} for an image file and its caption, or why not."""
    caption = clean_caption(caption, f"{path} caption")
    if isinstance(caption, BadSample):
        return caption
    image = load_image_file(path)
    if isinstance(image, BadSample):
        return image
    return {"image": transform(image), "caption": caption}
