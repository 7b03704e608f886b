"""The streaming machinery every sharded file-list dataset shares (LAION parts, tar shards).

Readers are rank x dataloader worker pairs (`sharding.reader_shard`); each epoch the files (or, with
fewer files than readers, the samples within them) are split disjointly and completely among them,
shuffled from (seed, epoch), decoded, and bad samples counted by reason.

Resuming mid-epoch: every reader's stream is a pure function of (files, seed, epoch, reader index,
reader count), so its position is two numbers, the epoch and the records of that epoch's shuffled
stream consumed (good and bad, `StreamPosition`). Each yielded sample carries its reader's position
after it (`"stream"`), the loader keeps the position of the last batch the model took from each
reader (`loader.ImageTextLoader.state_dict`), and `start_at` makes a fresh dataset replay each
reader's stream up to its position without decoding an image: files re-read, the shuffle buffer
refilled from the same RNG, records dropped undecoded. Random augmentations are drawn per sample
from (seed, epoch, reader, position), so they do not depend on where the stream was resumed either.
"""

import abc
import itertools
import random
from collections import Counter
from functools import partial
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple, TypeVar, Union

import paddle

from ..utils.log import logger
from . import sharding
from .pair_keys import image_key
from .samples import AllSamplesBadError, BadSample, decode_image, transformed

T = TypeVar("T")


class Record(NamedTuple):
    """A sample read but not yet decoded: the shuffle buffer holds these, not decoded images."""

    image: bytes  # encoded (JPEG, PNG, ...)
    caption: str
    where: str  # file and line or key, for the log


class StreamPosition(NamedTuple):
    """Where a reader's stream stands: `records` of epoch `epoch`'s shuffled stream consumed (good and bad)."""

    epoch: int
    records: int


def buffered_shuffle(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """`items` in a random order drawn from a buffer of `size` (0: unchanged), using O(size) memory."""
    if size <= 0:
        yield from items
        return
    buffer: List[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def _epoch_rng(seed: int, epoch: int, *more: int) -> random.Random:
    # String seeds hash with SHA-512, so the stream is the same in every process and Python run.
    return random.Random(":".join(str(part) for part in (seed, epoch, *more)))


def _keep_all(position: int) -> bool:
    return True


def _owns(file_index: int, index: int, count: int, position: int) -> bool:
    return (file_index + position) % count == index


def _describe(counts: Dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


class StreamingDataset(paddle.io.IterableDataset, abc.ABC):
    """Endless stream of {"image": float32 [3, H, W], "caption": str, "skipped": {reason: count}}.

    `skipped` counts the bad samples this reader skipped since the sample it last yielded; the
    counts of an epoch all arrive with that epoch's samples. `epochs=None` streams forever.
    Subclasses say how to read one file (`read`); this class shares the files among readers,
    shuffles, decodes and counts.

    Each epoch draws a file order from (seed, epoch). With at least as many files as readers
    (ranks x dataloader workers, `sharding.reader_shard`), reader i takes every count-th file of
    that order from i. With fewer, every reader scans every file and keeps the samples whose
    position p in file f (the file's index in `files`) has (f + p) % count == i: disjoint and
    complete like a global position, but needing no pass to count each file's samples first.
    Either way a buffer of `shuffle_buffer` samples mixes the stream, also seeded per epoch.
    """

    def __init__(self, files: List[str], transform: Callable, seed: int = 0, shuffle_buffer: int = 1000,
                 num_samples: Optional[int] = None, epochs: Optional[int] = None):
        if not files:
            raise ValueError("no files to read")
        self.files = files
        self.transform = transform
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.num_samples = num_samples
        self.epochs = epochs  # None: endless, as step-driven training wants; a number stops (tests, evaluation)
        self.start_positions: Dict[int, StreamPosition] = {}
        self.first_worker = 0

    def start_at(self, positions: Mapping[int, StreamPosition], first_worker: int = 0) -> None:
        """Resume: reader i starts at positions[i] (readers not named start at the beginning), and this
        rank's dataloader worker 0 plays its reader `first_worker` (see `sharding.reader_shard`), so the
        loader's round robin over workers goes on with the reader whose batch comes next."""
        self.start_positions = {int(reader): StreamPosition(*position) for reader, position in positions.items()}
        self.first_worker = first_worker

    @abc.abstractmethod
    def read(self, path: str, keep: Callable[[int], bool]) -> Iterator[Union[Record, BadSample]]:
        """The samples of file `path` whose position p (0-based, over all its samples, good or bad) has keep(p)."""

    def _plan(self, epoch: int, index: int, count: int) -> List[Tuple[str, Callable[[int], bool]]]:
        order = list(range(len(self.files)))
        _epoch_rng(self.seed, epoch).shuffle(order)
        if len(order) >= count:
            return [(self.files[f], _keep_all) for f in sharding.take_shard(order, index, count)]
        return [(self.files[f], partial(_owns, f, index, count)) for f in order]

    def _samples(self, epoch: int, index: int, count: int, skip: int) -> Iterator[Tuple[int, Union[Dict, BadSample]]]:
        """(position, sample) of this reader's share of the epoch, shuffled and decoded, from position
        `skip` on (the records before it are read but not decoded); bad samples as BadSample."""
        plan = self._plan(epoch, index, count)
        records = itertools.chain.from_iterable(self.read(path, keep) for path, keep in plan)
        shuffled = buffered_shuffle(records, self.shuffle_buffer, _epoch_rng(self.seed, epoch, index))
        replayed = sum(1 for _ in itertools.islice(shuffled, skip))
        if replayed < skip:
            raise ValueError(
                f"reader {index} of {count}: the resumed position (epoch {epoch}, record {skip}) lies past the end of "
                f"its share of {len(self.files)} files ({replayed} records): the files changed since the checkpoint "
                "was saved. Resume from a checkpoint of this data, or start afresh (no --resume_from_checkpoint)"
            )
        for position, item in enumerate(shuffled, start=skip):
            if isinstance(item, BadSample):
                yield position, item
                continue
            image = decode_image(item.image, item.where)
            if not isinstance(image, BadSample):
                image = self._transform(image, _epoch_rng(self.seed, epoch, index, position), item.where)
            yield position, image if isinstance(image, BadSample) else {"image": image, "caption": item.caption,
                                                                         "image_key": image_key(item.image)}

    def _transform(self, image, rng: random.Random, where: str):
        """The transform (as `samples.transformed`: a failure skips the sample) with its random
        augmentation (if it has one: an `rng` attribute) drawn from `rng`."""
        if not hasattr(self.transform, "rng"):
            return transformed(image, self.transform, where)
        previous, self.transform.rng = self.transform.rng, rng
        try:
            return transformed(image, self.transform, where)
        finally:
            self.transform.rng = previous

    def __iter__(self) -> Iterator[Dict]:
        """Samples as the class doc says, each with `"stream"`: [reader index, epoch, records], its
        reader's StreamPosition once the sample and the bad records after it are consumed."""
        index, count = sharding.reader_shard(self.first_worker)
        start = self.start_positions.get(index, StreamPosition(0, 0))
        for epoch in itertools.count(start.epoch) if self.epochs is None else range(start.epoch, self.epochs):
            # Each good sample waits for the next one, so the bad samples after an epoch's last
            # good one still ride on it: every epoch's counts arrive in full, even in a finite run.
            # A resumed epoch starts at a good sample: a saved position is where a held sample was.
            held, skipped = None, Counter()
            skip = start.records if epoch == start.epoch else 0
            for position, sample in self._samples(epoch, index, count, skip):
                if isinstance(sample, BadSample):
                    logger.debug("skipped %s: %s", sample.where, sample.reason)
                    skipped[sample.reason] += 1
                    continue
                if held is not None:
                    yield {**held, "skipped": dict(skipped), "stream": [index, epoch, position]}
                    skipped.clear()
                held = sample
            if held is None and skipped:
                raise AllSamplesBadError(
                    f"reader {index} of {count}: every sample of its share of {len(self.files)} files was bad "
                    f"in epoch {epoch} ({_describe(skipped)})"
                )
            if held is None:
                # Looping on would spin forever without yielding; the other readers carry on.
                logger.warning("reader %d of %d: its share of %d files holds no samples; it stops",
                               index, count, len(self.files))
                return
            yield {**held, "skipped": dict(skipped), "stream": [index, epoch + 1, 0]}
