"""Image-caption samples streamed from tar shards in the webdataset layout.

A sample is the run of consecutive members sharing a key: `<key>.jpg|jpeg|png|webp` (the image),
`<key>.txt` (the caption; `caption_key` picks another extension) and optionally `<key>.json`.
Shards are read as streams, never extracted. webdataset 1.0 imports without torch, so we use its
tar parsing (`tar_file_iterator`) and grouping by key (`group_by_keys`); the sharding over
ranks x dataloader workers is our own (`sharding.reader_shard`, via StreamingDataset), because
webdataset's `split_by_node` asks torch.distributed for the rank.

Bad samples are skipped and counted under `samples.REASONS`:
  - no image member                                -> missing_file
  - no caption member, or a blank one             -> empty_caption (invalid_utf8 if not UTF-8)
  - a shard that does not exist                    -> missing_file (one count, logged once)
  - a damaged tar: unreadable header or member
    data, a plain tar cut off without its end-of-
    archive blocks, a duplicate member name        -> corrupt_tar_member, one count per error; the
    stream cannot resume after damage, so the rest of that shard is lost (how many samples is
    unknown) and reading goes on with the next shard. The sample the damage cut short counts
    as this same error, not again under its missing member. A compressed shard cut short is
    caught only where the cut falls inside member data (tarfile reads a cut header as the end).
  - image bytes that do not decode                 -> as decode_image says
Paths are local files (or anything `open` reads).
"""

import json
import os
import tarfile
import zlib
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Union

import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ..utils.log import logger, warn_once
from .streaming import Record, StreamingDataset
from .samples import BadSample, clean_caption, decode_text

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"  # written next to the shards by paddlemix.tools.pack
_TAR_BLOCK = 512
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def expand_urls(urls: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    """Shard paths from a brace pattern ('dir/name-{000000..000123}.tar') or a list of paths/patterns."""
    patterns = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    return [url for pattern in patterns for url in braceexpand.braceexpand(os.fspath(pattern))]


def manifest_count(shards: List[str]) -> Optional[int]:
    """Samples in `shards` according to the manifest.json beside the first one; None without one.

    Sums the manifest's per-shard counts, so a subset of a packed set is counted right; a manifest
    without per-shard counts gives its "total".
    """
    path = os.path.join(os.path.dirname(shards[0]), MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if "shards" not in manifest:
        return manifest["total"]
    counts = {shard["name"]: shard["count"] for shard in manifest["shards"]}
    unlisted = [shard for shard in shards if os.path.basename(shard) not in counts]
    if unlisted:
        logger.warning("%s does not list %d of the shards (e.g. %s); their sample count is unknown",
                       path, len(unlisted), unlisted[0])
        return None
    return sum(counts[os.path.basename(shard)] for shard in shards)


def _collecting(errors: List[Exception], go_on: bool) -> Callable[[Exception], bool]:
    """A webdataset error handler: keep the error to count it, then go on with the stream or stop it."""

    def handle(error: Exception) -> bool:
        errors.append(error)
        return go_on

    return handle


def _lacks_end_marker(handle: BinaryIO) -> bool:
    """True for a plain (uncompressed) tar that does not end in two zero blocks.

    tarfile reads a tar cut at a block boundary (e.g. an interrupted copy) or inside a header as a
    shorter, intact one.
    Compressed tars are checked by their decompressor instead.
    """
    handle.seek(0)
    if handle.read(_TAR_BLOCK)[257:262] != b"ustar":
        return False
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(size - 2 * _TAR_BLOCK, 0))
    return size % _TAR_BLOCK != 0 or handle.read() != bytes(2 * _TAR_BLOCK)


def _members(handle: BinaryIO, url: str, errors: List[Exception]) -> Iterator[Dict]:
    """The shard's members as webdataset dicts; damage ends the stream and is appended to `errors`.

    Ending quietly rather than raising lets group_by_keys hand over the sample it holds.
    """
    try:
        for member in tar_file_iterator(handle, handler=_collecting(errors, go_on=False)):
            yield {**member, "__url__": url}
    except _STREAM_ERRORS as error:  # a damaged header is raised outside tar_file_iterator's handler
        errors.append(error)
        return
    if not errors and _lacks_end_marker(handle):
        errors.append(tarfile.ReadError("no end-of-archive blocks: the tar was cut short"))


def _damage(path: str, errors: List[Exception]) -> Iterator[BadSample]:
    for error in errors:
        logger.warning("%s: damaged tar shard: %s", path, error)
        yield BadSample("corrupt_tar_member", path)


class TarShardDataset(StreamingDataset):
    """Tar shards (brace pattern or list) as an endless sharded stream (see StreamingDataset).

    `num_samples`: the argument, else the count for these shards in the manifest.json beside them,
    else None.
    """

    def __init__(self, urls: Union[str, os.PathLike, Sequence[str]], transform: Callable, seed: int = 0,
                 shuffle_buffer: int = 1000, num_samples: Optional[int] = None, caption_key: str = "txt",
                 epochs: Optional[int] = None):
        shards = expand_urls(urls)
        if not shards:
            raise ValueError(f"no shards in {urls!r}")
        super().__init__(shards, transform, seed, shuffle_buffer,
                         num_samples if num_samples is not None else manifest_count(shards), epochs)
        self.caption_key = caption_key

    def _record(self, sample: Dict, where: str) -> Union[Record, BadSample]:
        image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image is None:
            return BadSample("missing_file", where)
        caption = decode_text(sample.get(self.caption_key, b""), where)
        if isinstance(caption, BadSample):
            return caption
        caption = clean_caption(caption, where)
        if isinstance(caption, BadSample):
            return caption
        return Record(image, caption, where)

    def read(self, path: str, keep: Callable[[int], bool]) -> Iterator[Union[Record, BadSample]]:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            warn_once(f"tar shard {path} does not exist; counted as missing_file")
            if keep(0):
                yield BadSample("missing_file", path)
            return
        errors: List[Exception] = []
        position = 0  # samples seen so far; errors are counted by the reader owning the next position
        with handle:
            for sample in group_by_keys(_members(handle, path, errors), handler=_collecting(errors, go_on=True)):
                record = self._record(sample, f"{path}:{sample['__key__']}")
                if keep(position):
                    yield from _damage(path, errors)
                    # An incomplete sample right after an error lacks the member the error lost: counted there.
                    if not (errors and isinstance(record, BadSample)):
                        yield record
                errors.clear()
                position += 1
            if keep(position):
                yield from _damage(path, errors)
