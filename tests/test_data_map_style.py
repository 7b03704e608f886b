"""Map-style datasets (coco_karpathy, CSV), the collator, the bad-sample report, the resumable
distributed sampler and the loader."""

import csv
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.data.coco import CocoKarpathyDataset, coco_karpathy, coco_root
from paddlemix.data.csv_dataset import CsvDataset
from paddlemix.data.loader import ImageTextLoader, ResumableDistributedBatchSampler, read_ahead
from paddlemix.data.samples import REASONS, AllSamplesBadError, BadSample
from paddlemix.data.synthetic import classes, write_shapes_dataset
from paddlemix.processors import SimpleTokenizer, image_transform

REPO_ROOT = Path(__file__).resolve().parents[1]
TRANSFORM = image_transform(32, is_train=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train_per_class=2, eval_per_class=1)


def test_synthetic_shapes_set_reads_through_the_coco_reader(shapes):
    train = coco_karpathy("train", TRANSFORM, data_dir=str(shapes))
    test = coco_karpathy("test", TRANSFORM, data_dir=str(shapes))
    assert len(train) == 2 * len(classes()) and len(test) == 5 * len(classes())  # 5 captions per test image
    sample = train[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == np.float32
    colour, shape, position = classes()[0]
    assert all(word in sample["caption"] for word in (colour, shape, *position.split()))


def test_missing_coco_root_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("PPMIX_HOME", str(tmp_path))

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"coco_karpathy_\{train,val,test\}\.json") as info:
        coco_root()
    assert str(tmp_path / "datasets" / "coco") in str(info.value)
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        coco_root(str(tmp_path / "elsewhere"))


def write_image(path: Path, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def broken_coco(tmp_path: Path) -> Path:
    """A coco_karpathy file with good samples and one of each bad kind a file-based set can hold."""
    images = tmp_path / "images"
    good = [write_image(images / f"good{i}.jpg") for i in range(4)]
    write_image(images / "tiny.png", size=(3, 40))
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_bytes(b"this is not an image")
    full = (images / "good0.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    records = [{"image": p.name, "caption": f"good {i}", "image_id": str(i)} for i, p in enumerate(good)]
    records += [
        {"image": "missing.jpg", "caption": "missing"},
        {"image": "empty.jpg", "caption": "empty"},
        {"image": "text.jpg", "caption": "text"},
        {"image": "truncated.jpg", "caption": "truncated"},
        {"image": "tiny.png", "caption": "tiny"},
        {"image": "good0.jpg", "caption": "   "},
    ]
    annotation = tmp_path / "custom.json"
    annotation.write_text(json.dumps(records))
    return annotation


def test_every_bad_file_sample_is_skipped_counted_and_good_ones_all_arrive(tmp_path, caplog):
    dataset = CocoKarpathyDataset(broken_coco(tmp_path), tmp_path / "images", TRANSFORM)
    loader = ImageTextLoader(dataset, batch_size=4, tokenizer=SimpleTokenizer(context_length=8), shuffle=False, log_every=1)
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        batches = list(loader)
    assert sum(int(b["image"].shape[0]) for b in batches) == 4
    expected = {"missing_file": 1, "empty_file": 1, "not_an_image": 1, "truncated_image": 1, "tiny_image": 1,
                "empty_caption": 1}
    assert "train epoch: 4 samples used, skipped " + ", ".join(f"{n} {r}" for r, n in sorted(expected.items())) in caplog.text


def test_a_dataset_whose_every_sample_is_bad_stops_with_a_clear_error(tmp_path):
    annotation = tmp_path / "bad.json"
    annotation.write_text(json.dumps([{"image": f"missing{i}.jpg", "caption": "x"} for i in range(3)]))
    loader = ImageTextLoader(CocoKarpathyDataset(annotation, tmp_path, TRANSFORM), batch_size=2, tokenizer=SimpleTokenizer(), shuffle=False)
    with pytest.raises(AllSamplesBadError, match="every sample of the epoch was bad.*3 missing_file"):
        list(loader)


def test_csv_dataset_reads_open_clip_style_columns_and_names_wrong_keys(tmp_path):
    write_image(tmp_path / "img" / "a.jpg")
    write_image(tmp_path / "img" / "b.jpg")
    path = tmp_path / "cc.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows([["title", "filepath"], ["a photo of a", "img/a.jpg"], ["b caption", "img/b.jpg"]])
    dataset = CsvDataset(path, TRANSFORM)
    assert [dataset[i]["caption"] for i in range(2)] == ["a photo of a", "b caption"]
    with pytest.raises(ValueError, match="no column 'image'.*--csv_img_key"):
        CsvDataset(path, TRANSFORM, img_key="image")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sampler_slices_are_disjoint_and_cover_the_epoch(world_size):
    size = 50
    slices = [
        [i for batch in ResumableDistributedBatchSampler(size, 4, seed=3, rank=r, world_size=world_size)
         for i, _ in batch]
        for r in range(world_size)
    ]
    flat = [i for s in slices for i in s]
    assert len(flat) == len(set(flat)) == size - size % world_size
    assert len({len(s) for s in slices}) == 1  # every rank runs the same number of steps
    again = ResumableDistributedBatchSampler(size, 4, seed=3, rank=0, world_size=world_size)
    assert [i for b in again for i, _ in b] == slices[0]  # deterministic
    again.set_epoch(1)
    assert [i for b in again for i, _ in b] != slices[0]  # reshuffled per epoch


def batch_ids(loader, count=None):
    out = []
    for batch in loader:
        out.append(batch["input_ids"].numpy().copy())
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_resume_continues_with_exactly_the_unseen_batches(shapes, num_workers):
    dataset = coco_karpathy("train", TRANSFORM, data_dir=str(shapes))
    uninterrupted = ImageTextLoader(dataset, batch_size=8, tokenizer=SimpleTokenizer(context_length=16), seed=5, num_workers=num_workers)
    uninterrupted.set_epoch(2)
    full_epoch = batch_ids(uninterrupted)

    first = ImageTextLoader(dataset, batch_size=8, tokenizer=SimpleTokenizer(context_length=16), seed=5, num_workers=num_workers)
    first.set_epoch(2)
    seen = batch_ids(first, count=5)
    state = first.state_dict()
    assert state == {"epoch": 2, "consumed_batches": 5}

    resumed = ImageTextLoader(dataset, batch_size=8, tokenizer=SimpleTokenizer(context_length=16), seed=5, num_workers=num_workers)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint
    rest = batch_ids(resumed)
    assert len(seen) + len(rest) == len(full_epoch)
    for got, expected in zip(seen + rest, full_epoch):
        np.testing.assert_array_equal(got, expected)
    assert resumed.state_dict()["epoch"] == 3  # the next epoch starts from its beginning


def test_two_processes_read_disjoint_slices_that_cover_the_epoch(tmp_path):
    images = tmp_path / "data" / "images"
    records = [{"image": write_image(images / f"{i}.jpg").name, "caption": f"caption number {i}"} for i in range(30)]
    (tmp_path / "data" / "annotations").mkdir()
    (tmp_path / "data" / "annotations" / "coco_karpathy_train.json").write_text(json.dumps(records))
    worker = Path(__file__).parent / "distributed" / "sampler_worker.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
         str(worker), str(tmp_path / "data"), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    read = [{tuple(ids) for ids in json.loads((tmp_path / f"rank{r}.json").read_text())} for r in range(2)]
    assert len(read[0]) == len(read[1]) == 15 and not read[0] & read[1]
    expected = {tuple(ids) for ids in SimpleTokenizer(context_length=16)([r["caption"] for r in records]).tolist()}
    assert read[0] | read[1] == expected


def test_bad_sample_reason_names_are_checked():
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSample("gremlins", "x")
    assert "corrupt_tar_member" in REASONS


def test_task_name_picks_the_dataset_format(shapes, tmp_path):
    from paddlemix.data.datasets import build_dataset
    from paddlemix.data.laion import LaionDataset
    from paddlemix.data.webdataset_shards import TarShardDataset

    assert len(build_dataset("coco_clip", TRANSFORM, data_dir=str(shapes))) == 2 * len(classes())
    custom = build_dataset(str(shapes / "annotations" / "coco_karpathy_val.json"), TRANSFORM)
    assert custom.image_root == shapes / "images" and custom[0]["image"].shape == (3, 32, 32)
    (tmp_path / "parts.filelist").write_text("part-0.txt\n")
    (tmp_path / "part-0.txt").write_text("")
    assert isinstance(build_dataset(str(tmp_path / "parts.filelist"), TRANSFORM), LaionDataset)
    assert isinstance(build_dataset(str(tmp_path / "s-{000..003}.tar"), TRANSFORM), TarShardDataset)
    with pytest.raises(ValueError, match="(?s)coco_clip.*FILE.json"):
        build_dataset("coco_captions", TRANSFORM)


# ---- read_ahead: the batches of a loader without workers, read one ahead in a thread

def reader_threads() -> set:
    return {thread for thread in threading.enumerate() if thread.name == "paddlemix-read-ahead"}


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_read_ahead_yields_every_item_in_order_and_reads_at_most_one_ahead():
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    seen, before = [], reader_threads()
    for item in read_ahead(items()):
        assert wait_for(lambda: len(produced) >= min(item + 2, 5))
        time.sleep(0.05)
        assert len(produced) <= item + 3  # the item in hand, one in the queue, one waiting to go in
        seen.append(item)
    assert seen == list(range(5))
    assert wait_for(lambda: reader_threads() == before)


@pytest.fixture()
def deadline():
    """Raises TimeoutError in the test after 10 s: a hang fails the test instead of the CI run."""
    def expire(signum, frame):
        raise TimeoutError("the consumer still waits after 10 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_exception_while_reading_reaches_the_consumer_instead_of_hanging_it(deadline):
    def items():
        yield 1
        raise OSError("image file is truncated")

    before = reader_threads()
    consumer = read_ahead(items())
    assert next(consumer) == 1
    with pytest.raises(OSError, match="truncated"):
        next(consumer)
    assert wait_for(lambda: reader_threads() == before)


def test_a_signal_reaches_a_consumer_waiting_for_a_slow_reader():
    """SIGTERM's handler (the trainer saves a checkpoint) must run while the loop waits for a batch."""
    def slow():
        time.sleep(3)
        yield 1

    def interrupt(signum, frame):
        raise InterruptedError("signal handled")

    previous = signal.signal(signal.SIGALRM, interrupt)
    consumer = read_ahead(slow())
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(InterruptedError, match="signal handled"):
            next(consumer)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5


def test_a_consumer_that_stops_early_stops_the_reader():
    before = reader_threads()
    consumer = read_ahead(itertools.count())
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    assert len(reader_threads() - before) == 1
    consumer.close()
    assert wait_for(lambda: reader_threads() == before)


def test_a_training_loader_without_workers_raises_a_collators_error_in_the_training_loop(shapes, deadline):
    class BrokenTokenizer:
        context_length = 8

        def __call__(self, captions):
            raise RuntimeError("tokenizer exploded")

    loader = ImageTextLoader(coco_karpathy("train", TRANSFORM, data_dir=str(shapes)), batch_size=4,
                             tokenizer=BrokenTokenizer())
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        next(iter(loader))
