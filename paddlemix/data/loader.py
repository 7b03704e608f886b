"""Batches for training: the collator, a resumable distributed sampler, and the loader that
reports skipped samples.

Map-style datasets return a BadSample in place of a broken sample; streaming datasets skip it and
count it in the next sample's `skipped`. Either way the collator drops it from the batch and
passes the counts along, and the loader (in the main process, whatever the number of workers)
adds them up and logs them.

Without workers the samples are read by `main_thread_batches`, one batch ahead in a thread of our own
(`read_ahead`), not in the background thread of Paddle's single-process DataLoader: an exception
there ends that thread while the consumer waits on its queue forever, deaf to SIGTERM. Ours hands the
exception to the consumer.
"""

import itertools
import queue
import random
import threading
import time
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import paddle

from ..utils.distributed import data_worker_init, get_rank, get_world_size
from ..utils.log import logger
from .pair_keys import collate_pair_keys
from .samples import REASONS, AllSamplesBadError, BadSample, log_skipped


def main_thread_batches(dataset, collate_fn: Callable, batch_sampler: Optional[Iterable] = None, batch_size: int = 1,
                        drop_last: bool = False) -> Iterator[Dict]:
    """What `paddle.io.DataLoader(dataset, ..., num_workers=0)` yields, read in the calling thread.

    Paddle's DataLoader reads a dataset without workers in a background thread
    (paddle/io/dataloader/dataloader_iter.py, `_thread_loop`), which an exception from the dataset or
    `collate_fn` ends without telling the consumer, left waiting forever. Read here, the exception
    reaches the caller. Map-style datasets are read in `batch_sampler`'s batches of indices, iterable
    ones in runs of `batch_size` samples (the last, shorter one dropped with `drop_last`). Numpy
    arrays in a batch become paddle tensors, as the DataLoader returns them.
    """
    if batch_sampler is not None:
        chunks = ([dataset[index] for index in indices] for indices in batch_sampler)
    else:
        samples = iter(dataset)
        chunks = iter(lambda: list(itertools.islice(samples, batch_size)), [])
    for chunk in chunks:
        if batch_sampler is None and drop_last and len(chunk) < batch_size:
            return
        batch = collate_fn(chunk)
        yield {key: paddle.to_tensor(value) if isinstance(value, np.ndarray) else value for key, value in batch.items()}


def read_ahead(batches: Iterator, depth: int = 1) -> Iterator:
    """`batches`, read up to `depth` items ahead in a background thread.

    Image decoding and resizing (PIL releases the GIL) then overlap the training step, whose Python and
    small kernels leave a core idle much of the time: on the README's demo (2 cores) the step's 40 ms of
    data reading mostly vanish. An exception while reading is raised here, in the consumer, with its
    traceback; a consumer that stops early (or is interrupted) stops the reader at its next item.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def hand_over(kind: str, value) -> bool:
        while not stopped.is_set():
            try:
                handoff.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in batches:
                if not hand_over("item", item):
                    return
            hand_over("end", None)
        except BaseException as error:  # whatever ends the reader reaches the consumer
            hand_over("error", error)

    reader = threading.Thread(target=read, name="paddlemix-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stopped.set()


class ImageTextCollator:
    """samples -> {"image": float32 [B, 3, H, W], "input_ids": int64 [B, context_length], "skipped": {reason: n},
    "caption_keys" and "image_keys": int64 [B]}, the captions tokenized by the model's `tokenizer`
    (processors.get_tokenizer); the keys (pair_keys.py) tell the loss which pairs share an image or a
    caption, and the model never sees them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: List) -> Dict:
        skipped: Counter = Counter()
        good = []
        for sample in samples:
            if isinstance(sample, BadSample):
                skipped[sample.reason] += 1
                log_skipped(sample)
            else:
                skipped.update(sample.get("skipped", {}))
                good.append(sample)
        if good:
            images = np.stack([sample["image"] for sample in good])
            input_ids = self.tokenizer([sample["caption"] for sample in good])
        else:
            images = np.zeros((0, 3, 1, 1), dtype=np.float32)
            input_ids = np.zeros((0, self.tokenizer.context_length), dtype=np.int64)
        # counts as an int64 array in REASON order: numbers survive the worker -> main transfer
        batch = {"image": images, "input_ids": input_ids, "skipped": _counts_to_array(skipped),
                 **collate_pair_keys(good)}
        if good and "stream" in good[-1]:  # a batch is one reader's run: its position after the last sample
            batch["stream"] = np.array(good[-1]["stream"], dtype=np.int64)
        return batch


def _counts_to_array(counts: Counter) -> np.ndarray:
    return np.array([counts.get(reason, 0) for reason in REASONS], dtype=np.int64)


class BadSampleReport:
    """Counts of skipped samples by reason; one summary line every `log_every` batches and per epoch."""

    def __init__(self, name: str = "train", log_every: int = 100):
        self.name = name
        self.log_every = log_every
        self.epoch_good = 0
        self.epoch_bad: Counter = Counter()
        self.interval_bad: Counter = Counter()
        self.batches = 0

    def update(self, good: int, skipped: Dict[str, int]) -> None:
        self.epoch_good += good
        self.epoch_bad.update({k: v for k, v in skipped.items() if v})
        self.interval_bad.update({k: v for k, v in skipped.items() if v})
        self.batches += 1
        if self.batches % self.log_every == 0 and self.interval_bad:
            logger.warning("%s: skipped %s in the last %d batches", self.name, _describe(self.interval_bad), self.log_every)
            self.interval_bad.clear()

    def end_epoch(self) -> None:
        """Log the epoch's summary; an epoch without a single usable sample is an error."""
        if self.epoch_bad:
            logger.warning("%s epoch: %d samples used, skipped %s", self.name, self.epoch_good, _describe(self.epoch_bad))
        if self.epoch_good == 0 and self.epoch_bad:
            raise AllSamplesBadError(f"{self.name}: every sample of the epoch was bad ({_describe(self.epoch_bad)})")
        self.epoch_good, self.epoch_bad, self.interval_bad = 0, Counter(), Counter()


def _describe(counts: Counter) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


class ResumableDistributedBatchSampler(paddle.io.BatchSampler):
    """Batches of (index, sample seed) of this rank's disjoint slice of a per-epoch shuffle.

    Epoch e's order is a permutation drawn from (seed, e); rank r takes every world-th index from
    position r. So that every rank runs the same number of steps, the last len % world indices of
    the permutation (a different few each epoch) wait for a later epoch. `skip_batches` resumes
    mid-epoch: the first batches of the epoch are not drawn again. Each sample's seed, from
    (seed, epoch, index) alone, drives its random augmentation (see SeededSamples).
    """

    def __init__(self, dataset_size: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if dataset_size < self.world_size:
            raise ValueError(f"{dataset_size} samples cannot be split over {self.world_size} ranks")
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_indices(self) -> np.ndarray:
        order = np.arange(self.dataset_size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_size)
        usable = self.dataset_size - self.dataset_size % self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = self.dataset_size // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        indices = self.rank_indices()
        for start in range(self.skip_batches * self.batch_size, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield [(int(index), self.sample_seed(index)) for index in batch]


class SeededSamples(paddle.io.Dataset):
    """`dataset[(index, seed)]`: the sample with its random augmentation drawn from `seed` alone.

    The augmentation then does not depend on which process loads the sample or when (workers
    prefetch ahead of training), so a resumed run and any number of workers see the same crops.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if not hasattr(transform, "rng"):
            return self.dataset[index]
        previous, transform.rng = transform.rng, random.Random(seed)
        try:
            return self.dataset[index]
        finally:
            transform.rng = previous


class ImageTextLoader:
    """Iterates batches {"image", "input_ids", "image_keys", "caption_keys"} (paddle tensors; see
    ImageTextCollator) and keeps the bad-sample report.

    For map-style datasets `state_dict()` records the epoch and the batches *consumed* by the
    training loop (not the ones workers prefetched), so `load_state_dict` resumes exactly after
    the last batch the model saw. For streaming datasets it records, per reader (rank x worker), the
    `streaming.StreamPosition` after the last batch consumed from it and, per rank, the worker whose
    batch comes next; the dataset replays each reader's stream to there (see streaming.py). Every
    rank must then call `state_dict()`, a collective: each rank knows only its own readers.
    """

    def __init__(self, dataset, batch_size: int, tokenizer, num_workers: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, log_every: int = 100, name: str = "train"):
        self.dataset = dataset
        self.collator = ImageTextCollator(tokenizer)
        self.report = BadSampleReport(name, log_every)
        self.streaming = isinstance(dataset, paddle.io.IterableDataset)
        if self.streaming:
            self.batch_sampler = None
            self.loader = paddle.io.DataLoader(dataset, batch_size=batch_size, collate_fn=self.collator,
                                               num_workers=num_workers, drop_last=drop_last,
                                               worker_init_fn=data_worker_init)
        else:
            self.batch_sampler = ResumableDistributedBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
            self.loader = paddle.io.DataLoader(SeededSamples(dataset), batch_sampler=self.batch_sampler,
                                               collate_fn=self.collator, num_workers=num_workers,
                                               worker_init_fn=data_worker_init)
        self.num_workers = num_workers
        self.batch_size, self.drop_last = batch_size, drop_last  # for main_thread_batches, without workers
        self.consumed_batches = 0
        self.stream_positions: Dict[int, List[int]] = {}  # reader -> [epoch, records] after its last batch taken
        self.next_worker = 0  # the worker (of this rank) whose batch comes next
        self.wait_seconds = 0.0  # time the consumer spent waiting for batches (data time)

    def take_wait_seconds(self) -> float:
        """Data-waiting time since the last call (for the trainer's logs)."""
        waited, self.wait_seconds = self.wait_seconds, 0.0
        return waited

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError("a streaming dataset has no length: set --max_steps")
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        if self.batch_sampler is not None and epoch != self.batch_sampler.epoch:
            self.batch_sampler.set_epoch(epoch)
            self.batch_sampler.skip_batches = self.consumed_batches = 0

    def state_dict(self) -> Dict:
        """JSON-able position; for a stream every rank must call it (it gathers all ranks' readers)."""
        epoch = self.batch_sampler.epoch if self.batch_sampler is not None else 0
        state = {"epoch": epoch, "consumed_batches": self.consumed_batches}
        if self.streaming:
            state["stream"] = self._stream_state()
        return state

    def load_state_dict(self, state: Dict) -> None:
        if self.streaming:
            self._load_stream_state(state)
            return
        epoch, consumed = state["epoch"], state["consumed_batches"]
        if consumed >= len(self.batch_sampler):  # saved after an epoch's last batch: the next epoch, from its start
            epoch, consumed = epoch + 1, 0
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.skip_batches = self.consumed_batches = consumed

    def _workers_per_rank(self) -> int:
        return max(1, self.num_workers)

    def _stream_state(self) -> Dict:
        mine = {"readers": get_world_size() * self._workers_per_rank(),
                "positions": {str(reader): position for reader, position in sorted(self.stream_positions.items())},
                "next_worker": {str(get_rank()): self.next_worker}}
        if get_world_size() == 1:
            return mine
        everyone: List[Dict] = []
        paddle.distributed.all_gather_object(everyone, mine)
        return {"readers": mine["readers"],
                "positions": {reader: position for rank in everyone for reader, position in rank["positions"].items()},
                "next_worker": {rank: worker for state in everyone for rank, worker in state["next_worker"].items()}}

    def _load_stream_state(self, state: Dict) -> None:
        stream = state.get("stream")
        if stream is None:
            logger.warning("the checkpoint holds no stream position (saved by a paddlemix that resumed streams by "
                           "step count only): the stream starts again from its beginning")
            return
        workers = self._workers_per_rank()
        readers = get_world_size() * workers
        if stream["readers"] != readers:
            raise ValueError(
                f"the checkpoint's stream position is for {stream['readers']} readers (ranks x "
                f"--dataloader_num_workers), this run has {readers} ({get_world_size()} x {workers}): resume with "
                "the number of processes and --dataloader_num_workers of the run that saved it"
            )
        own = range(get_rank() * workers, (get_rank() + 1) * workers)
        self.stream_positions = {int(reader): list(position) for reader, position in stream["positions"].items()
                                 if int(reader) in own}
        self.next_worker = stream["next_worker"].get(str(get_rank()), 0)
        self.consumed_batches = state["consumed_batches"]

    def _took_stream_batch(self, stream: np.ndarray) -> None:
        reader, epoch, records = (int(value) for value in stream)
        self.stream_positions[reader] = [epoch, records]
        self.next_worker = (reader % self._workers_per_rank() + 1) % self._workers_per_rank()

    def __iter__(self) -> Iterator[Dict[str, paddle.Tensor]]:
        if self.streaming:  # go on from the batches consumed so far (or loaded by load_state_dict)
            self.dataset.start_at(self.stream_positions, self.next_worker)
        if self.num_workers:
            batches = iter(self.loader)
        else:
            dataset = self.dataset if self.streaming else SeededSamples(self.dataset)
            batches = read_ahead(main_thread_batches(dataset, self.collator, self.batch_sampler, self.batch_size,
                                                     self.drop_last))
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.wait_seconds += time.perf_counter() - started
            if batch is None:
                break
            skipped = np.asarray(batch.pop("skipped")).reshape(-1)
            self.report.update(int(batch["image"].shape[0]), dict(zip(REASONS, skipped.tolist())))
            if "stream" in batch:
                self._took_stream_batch(np.asarray(batch.pop("stream")).reshape(-1))
            self.consumed_batches += 1
            if batch["image"].shape[0]:
                yield batch
        if self.batch_sampler is not None:  # a finished epoch: the next one starts from its beginning
            self.report.end_epoch()
            self.set_epoch(self.batch_sampler.epoch + 1)
