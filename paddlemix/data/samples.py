"""One image-caption sample, and the ways a web-scale sample can be bad.

Every dataset reads its raw bytes and text through these helpers, so each kind of broken sample
is recognised in one place and reported under one name. A helper returns the decoded value or a
`BadSample` naming what was wrong; datasets pass `BadSample`s on instead of raising.
"""

import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Union

from PIL import Image, UnidentifiedImageError

from ..utils.log import logger
from .pair_keys import image_key

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
    "bad_field",  # a record field of the wrong type (e.g. "image": 123) or a record that is not an object
    "unknown_image_id",  # a COCO annotation whose image_id has no entry in the file's "images"
    "unreadable_file",  # the file exists (or may) but cannot be read: name too long, permission denied, I/O error
    "image_too_large",  # more pixels than max_image_pixels(): a decompression bomb, refused before decoding
    "decode_error",  # any other exception while decoding or transforming one sample (logged with its message)
)
MIN_IMAGE_SIDE = 5  # pixels; smaller images carry no usable content (and break resizes)
# Images with more pixels are skipped as image_too_large, checked from the header before any pixel is
# decoded. Default: PIL's own Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3, about 89.5M).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_PIXELS_ENV = "PPMIX_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class BadSample:
    reason: str  # one of REASONS
    where: str  # file, line or key, for the log
    detail: str = ""  # what exactly failed, where the reason alone does not say (an exception's message)

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {self.reason!r}; known: {', '.join(REASONS)}")

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


NAMED_PER_REASON = 3  # skipped samples of each reason a process names at WARNING; the rest at DEBUG
_named: Counter = Counter()


def log_skipped(sample: BadSample) -> None:
    """Name a skipped sample in the log: the first few of each reason as warnings, then at DEBUG
    (the counts by reason are logged in summaries, e.g. loader.BadSampleReport)."""
    _named[sample.reason] += 1
    quiet = _named[sample.reason] > NAMED_PER_REASON
    more = f"; further {sample.reason} samples are named at DEBUG" if _named[sample.reason] == NAMED_PER_REASON else ""
    logger.log(logging.DEBUG if quiet else logging.WARNING, "skipped %s%s", sample, more)


def max_image_pixels() -> int:
    """The pixel limit of decode_image: $PPMIX_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS.

    PIL itself refuses images over twice its own `PIL.Image.MAX_IMAGE_PIXELS` (179M pixels by
    default); a limit above that also needs PIL's raised.
    """
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if value is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"${MAX_IMAGE_PIXELS_ENV}={value!r}: give the largest image to decode as a pixel count "
                         f"(width x height) >= 1, e.g. {DEFAULT_MAX_IMAGE_PIXELS}, or unset it")
    return int(value)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def decode_image(data: bytes, where: str) -> Union[Image.Image, BadSample]:
    """Decoded image from encoded bytes (JPEG, PNG, WebP, ...), or why it cannot be used.

    The image keeps its own mode: the transforms convert to RGB after resizing, as open_clip does
    (PIL resizes RGBA premultiplied, so converting first would change the pixels). An image of more
    than max_image_pixels() pixels is refused from its header, before its pixels are decoded.
    """
    if not data:
        return BadSample("empty_file", where)
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > limit:
                return BadSample("image_too_large", where, f"{width}x{height} pixels, over the limit of {limit} "
                                 f"(${MAX_IMAGE_PIXELS_ENV})")
            image.load()  # decodes everything now: a truncated file fails here, not in a worker later
    except UnidentifiedImageError:
        return BadSample("not_an_image", where)
    except Image.DecompressionBombError as error:  # over twice PIL's own limit: PIL refuses in Image.open
        return BadSample("image_too_large", where, str(error))
    except (OSError, SyntaxError, ValueError) as error:
        reason = "truncated_image" if "truncated" in str(error).lower() or "broken" in str(error).lower() else "not_an_image"
        return BadSample(reason, where, _error_text(error))
    except Exception as error:  # the bad-sample rule: whatever decoding one sample raises skips it
        return BadSample("decode_error", where, _error_text(error))
    if min(image.size) < MIN_IMAGE_SIDE:
        return BadSample("tiny_image", where)
    return image


def read_file(path: Union[str, os.PathLike]) -> Union[bytes, BadSample]:
    """The bytes of the file at `path`, or why it cannot be read (missing, a folder, name too long, ...)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return BadSample("missing_file", str(path))
    except IsADirectoryError:
        return BadSample("not_an_image", str(path))
    except (OSError, ValueError) as error:  # ENAMETOOLONG, EACCES, EIO, ...; ValueError: a NUL byte in the name
        return BadSample("unreadable_file", str(path), _error_text(error))


def load_image_file(path: str) -> Union[Image.Image, BadSample]:
    """Decoded image from a file path (see decode_image), or why it cannot be used."""
    data = read_file(path)
    return data if isinstance(data, BadSample) else decode_image(data, path)


def decode_text(data: bytes, where: str, fallback: str = "") -> Union[str, BadSample]:
    """Bytes as UTF-8 (or the `fallback` codec, e.g. 'gb18030' for LAION's Chinese parts)."""
    for codec in ("utf-8", fallback) if fallback else ("utf-8",):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return BadSample("invalid_utf8", where)


def clean_caption(caption: object, where: str) -> Union[str, BadSample]:
    """The caption stripped of surrounding whitespace; empty or missing captions are bad, and so are
    captions that are not text (a number, an object)."""
    if caption is not None and not isinstance(caption, str):
        return BadSample("bad_field", where, f"caption is a {type(caption).__name__}, not text")
    if not caption or not caption.strip():
        return BadSample("empty_caption", where)
    return caption.strip()


class AllSamplesBadError(RuntimeError):
    """A dataset (or a reader's whole shard) held no usable sample: stop instead of spinning."""


def transformed(image: Image.Image, transform: Callable, where: str):
    """transform(image), or a BadSample when the transform fails on this one image."""
    try:
        return transform(image)
    except Exception as error:  # the bad-sample rule: whatever one sample raises skips it
        return BadSample("decode_error", where, _error_text(error))


def decoded_sample(data: bytes, caption: str, transform: Callable, where: str) -> Union[Dict, BadSample]:
    """{"image": transform(decoded image), "caption": caption, "image_key": pair_keys.image_key(data)} from
    encoded image bytes, or why not."""
    image = decode_image(data, where)
    if isinstance(image, BadSample):
        return image
    image = transformed(image, transform, where)
    return image if isinstance(image, BadSample) else {"image": image, "caption": caption, "image_key": image_key(data)}


def image_file_sample(path: str, caption: object, transform: Callable) -> Union[Dict, BadSample]:
    """{"image": transform(image), "caption": str, "image_key": int} for an image file and its caption, or why not."""
    caption = clean_caption(caption, f"{path} caption")
    if isinstance(caption, BadSample):
        return caption
    data = read_file(path)
    return data if isinstance(data, BadSample) else decoded_sample(data, caption, transform, path)
