"""Streaming datasets (LAION parts, tar shards) resume exactly mid-epoch: a loader that read N batches,
saved its state and was rebuilt from scratch gives the same next M batches, bad-sample counts and
random crops included, as one loader reading N + M batches; with and without dataloader workers."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.data.laion import LaionDataset
from paddlemix.data.loader import ImageTextLoader
from paddlemix.data.webdataset_shards import TarShardDataset
from paddlemix.processors import SimpleTokenizer, image_transform

from streaming_helpers import take_batches
from trainer_helpers import flags, preempt, run_to_end, step_losses

BATCH, BEFORE, AFTER = 3, 5, 9  # with 2 files x 6 good samples the resumed part crosses epochs


def encoded_image(shade: int) -> bytes:
    """A 12 x 10 JPEG with a gradient, so that different random crops give different pixels."""
    y, x = np.mgrid[0:10, 0:12]
    pixels = np.stack([(x * 20 + shade) % 256, (y * 25 + 2 * shade) % 256, np.full_like(x, 64)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def laion_files(root) -> str:
    from test_laion_dataset import part_line  # the fixture's line layout

    for part in range(2):
        lines = [part_line({"caption_en": f"part {part} {i}"}, encoded_image(20 * i + part), key=i) for i in range(6)]
        lines.insert(2, part_line({"caption_en": "cut"}, encoded_image(1)[:40]))  # truncated_image, found by decoding
        lines.insert(5, part_line({"caption_en": ""}, encoded_image(2)))  # empty_caption, found by parsing
        (root / f"part-{part}").write_bytes(b"".join(lines))
    (root / "filelist").write_text("part-0\npart-1\n")
    return str(root / "filelist")


def tar_files(root) -> str:
    for shard in range(2):
        with tarfile.open(root / f"shard-{shard}.tar", "w") as tar:
            members = [(f"s{shard}_{i}", encoded_image(20 * i + shard), f"shard {shard} {i}") for i in range(6)]
            members.insert(3, (f"s{shard}_cut", encoded_image(1)[:40], "cut"))
            for key, image, caption in members:
                for name, data in ((f"{key}.jpg", image), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "shard-{0..1}.tar")


WRITERS = {"laion": laion_files, "tar_shards": tar_files}


def loader_of(kind, files, workers):
    """A fresh dataset and loader over `files` (what WRITERS[kind] wrote), random crops on."""
    dataset_class = LaionDataset if kind == "laion" else TarShardDataset
    dataset = dataset_class(files, image_transform(8, is_train=True), seed=4, shuffle_buffer=4)
    return ImageTextLoader(dataset, batch_size=BATCH, tokenizer=SimpleTokenizer(context_length=16), num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "two_workers"])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_stream_resumed_from_saved_state_continues_with_the_uninterrupted_batches(tmp_path, kind, workers):
    files = WRITERS[kind](tmp_path)
    uninterrupted = loader_of(kind, files, workers)
    expected = take_batches(uninterrupted, BEFORE + AFTER)

    first = loader_of(kind, files, workers)
    before = take_batches(first, BEFORE)
    state = json.loads(json.dumps(first.state_dict()))  # as the trainer writes it
    resumed = loader_of(kind, files, workers)  # a new process: fresh dataset and loader
    resumed.load_state_dict(state)
    after = take_batches(resumed, AFTER)

    assert len(expected) == len(before + after) == BEFORE + AFTER
    for step, (want, got) in enumerate(zip(expected, before + after)):
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"], err_msg=f"captions of batch {step}")
        np.testing.assert_array_equal(got["image"], want["image"], err_msg=f"images (crops) of batch {step}")
    skipped = first.report.epoch_bad + resumed.report.epoch_bad
    assert skipped == uninterrupted.report.epoch_bad and sum(skipped.values()) > 0


def test_stream_state_of_another_reader_count_is_refused_naming_the_flag(tmp_path):
    files = laion_files(tmp_path)
    saved = loader_of("laion", files, 2)
    take_batches(saved, 2)
    state = saved.state_dict()
    with pytest.raises(ValueError, match="--dataloader_num_workers"):
        loader_of("laion", files, 0).load_state_dict(state)


def test_stream_position_past_the_end_of_changed_files_is_an_error(tmp_path):
    files = laion_files(tmp_path)
    saved = loader_of("laion", files, 0)
    take_batches(saved, 2)
    state = saved.state_dict()
    for part in ("part-0", "part-1"):  # the data shrank since the checkpoint
        (tmp_path / part).write_bytes(b"")
    resumed = loader_of("laion", files, 0)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match="the files changed since the checkpoint"):
        take_batches(resumed, 1)


LAION_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "laion_part.filelist"  # 2 parts, 30 good lines


def laion_training_flags(setup, output_dir, *extra):
    """The tiny CLIP on the fixture LAION parts: 30 steps of 4 samples (4 epochs), 2 data workers."""
    args = flags(setup, output_dir, "--max_steps", "30", "--per_device_train_batch_size", "4",
                 "--dataloader_num_workers", "2", *extra)
    args[args.index("--task_name") + 1] = str(LAION_FIXTURE)
    data_dir = args.index("--data_dir")
    del args[data_dir : data_dir + 2]
    return args


@pytest.mark.slow
def test_trainer_preempted_on_a_laion_stream_resumes_with_bit_identical_losses(setup, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(laion_training_flags(setup, uninterrupted))
    expected = step_losses(uninterrupted)
    assert sorted(expected) == list(range(1, 31))

    preempted = tmp_path / "preempted"
    stopped_at = preempt(laion_training_flags(setup, preempted), preempted, after_step=5)
    assert 5 <= stopped_at < 30, f"the SIGTERM should stop the run mid-stream (stopped at {stopped_at})"

    run_to_end(laion_training_flags(setup, preempted, "--resume_from_checkpoint", "auto"))
    resumed = step_losses(preempted)
    assert sorted(resumed) == list(range(1, 31))
    assert [resumed[step] for step in range(1, 31)] == [expected[step] for step in range(1, 31)]
