"""Fault injection: one bad sample of each kind is skipped and counted under its reason, naming its
file; an exception from dataset code stops the run with that exception instead of hanging it; bad
flags and templates fail naming the flag, template, file and line.

Whatever could hang on a regression runs in a subprocess with a timeout, so CI fails instead of waiting.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix import AutoConfig, AutoModel
from paddlemix.cli import main as cli_main
from paddlemix.data.coco import CocoKarpathyDataset
from paddlemix.data.csv_dataset import CsvDataset
from paddlemix.data.loader import ImageTextLoader
from paddlemix.data.samples import MAX_IMAGE_PIXELS_ENV, BadSample, decode_image, load_image_file
from paddlemix.evaluation.datasets import ClassificationSet
from paddlemix.evaluation.zero_shot import build_zero_shot_classifier
from paddlemix.processors import SimpleTokenizer, get_tokenizer, image_transform
from paddlemix.tools.pack import coco_karpathy_records, pack
from paddlemix.tools.pack import main as pack_main
from paddlemix.trainer.arguments import parse_arguments

from trainer_helpers import REPO_ROOT, flags

TRANSFORM = image_transform(32, is_train=False)
HANG_TIMEOUT = 120  # seconds: far above any of these runs, far below "forever"
LONG_NAME = "x" * 300 + ".png"  # OSError: File name too long


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 15000) -> bytes:
    """A valid 1-bit PNG of side x side white pixels: 46 KB on disk, 225M pixels when decoded."""
    row = b"\x00" + b"\xff" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def noise_png(size=(40, 30)) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        encoded, format="PNG")
    return encoded.getvalue()


def bad_records(images: Path, good: str) -> list:
    """coco_karpathy records of every bad kind a JSON can hold (`good`: a readable image under `images`),
    the bomb PNG written into `images`."""
    (images / "bomb.png").write_bytes(bomb_png())
    return [
        {"image": 123, "caption": "an image field that is a number"},
        {"image": good, "caption": 5},
        {"image": LONG_NAME, "caption": "a file name too long for the file system"},
        {"image": "bomb.png", "caption": "a decompression bomb"},
    ]


EXPECTED_SKIPS = {"bad_field": 2, "image_too_large": 1, "unreadable_file": 1}


def run_python(code: str, timeout: int = HANG_TIMEOUT, env=None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                              os.environ.get("PYTHONPATH")])))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=environment)


# ---------------------------------------------------------------- one sample


def test_a_bomb_png_is_skipped_as_image_too_large_naming_the_file():
    data = bomb_png()
    assert len(data) < 64_000
    sample = decode_image(data, "bomb.png")
    assert isinstance(sample, BadSample) and sample.reason == "image_too_large" and sample.where == "bomb.png"
    assert "225000000 pixels" in sample.detail


def test_the_pixel_limit_is_checked_from_the_header_before_any_pixel_is_decoded(monkeypatch):
    data = noise_png((40, 30))
    truncated = data[: len(data) // 2]  # decoding would fail as truncated_image
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1199")
    assert decode_image(truncated, "t.png").reason == "image_too_large"
    assert decode_image(data, "t.png").reason == "image_too_large"
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1200")
    assert decode_image(data, "t.png").size == (40, 30)
    assert decode_image(truncated, "t.png").reason == "truncated_image"
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"\\${MAX_IMAGE_PIXELS_ENV}='lots'"):
        decode_image(data, "t.png")


def test_an_exception_of_any_type_from_decoding_is_skipped_as_decode_error(monkeypatch):
    def broken_plugin(self):
        raise ZeroDivisionError("a plugin bug")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken_plugin)
    sample = decode_image(noise_png(), "odd.png")
    assert sample.reason == "decode_error" and "ZeroDivisionError: a plugin bug" in str(sample)


def test_a_file_name_too_long_is_skipped_as_unreadable_file(tmp_path):
    sample = load_image_file(str(tmp_path / LONG_NAME))
    assert sample.reason == "unreadable_file" and LONG_NAME in sample.where and "too long" in sample.detail


def test_each_bad_coco_record_is_skipped_under_its_reason_naming_the_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(noise_png())
    records = [{"image": "good.png", "caption": "fine"}, *bad_records(images, "good.png"), "not a record", {"caption": "no image"}]
    annotation = tmp_path / "custom.json"
    annotation.write_text(json.dumps(records))
    dataset = CocoKarpathyDataset(annotation, images, TRANSFORM)
    samples = [dataset[i] for i in range(len(dataset))]
    assert samples[0]["caption"] == "fine"
    bad = samples[1:]
    assert [s.reason for s in bad] == ["bad_field", "bad_field", "unreadable_file", "image_too_large", "bad_field",
                                       "bad_field"]
    assert bad[0].where == f"{annotation}[1]" and "123" in bad[0].detail
    assert bad[1].where == f"{images / 'good.png'} caption" and "int" in bad[1].detail
    assert bad[3].where == str(images / "bomb.png")


def test_invalid_utf8_in_a_csv_caption_is_skipped_naming_file_and_line(tmp_path):
    (tmp_path / "a.png").write_bytes(noise_png())
    path = tmp_path / "train.csv"
    path.write_bytes(b"filepath\ttitle\na.png\tfine\na.png\tcaf\xe9 au lait\na.png\tfine too\n")
    dataset = CsvDataset(path, TRANSFORM)
    assert len(dataset) == 3
    assert dataset[0]["caption"] == "fine" and dataset[2]["caption"] == "fine too"
    assert dataset[1] == BadSample("invalid_utf8", f"{path}:3")
    loader = ImageTextLoader(dataset, batch_size=3, tokenizer=SimpleTokenizer(context_length=8), shuffle=False)
    assert [int(b["image"].shape[0]) for b in loader] == [2]
    assert loader.report.epoch_good == 0  # the epoch ended: its report was logged and reset


def test_pack_from_csv_skips_invalid_utf8_and_counts_it(tmp_path):
    (tmp_path / "a.png").write_bytes(noise_png())
    path = tmp_path / "train.csv"
    path.write_bytes(b"filepath\ttitle\na.png\tcaf\xe9\na.png\tfine\n")
    assert pack_main(["--from", "csv", "--csv", str(path), "--output", str(tmp_path / "out"), "--shard-size", "4"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["total"] == 1 and manifest["skipped"] == {"invalid_utf8": 1}


# ---------------------------------------------------------------- exceptions reach the main thread

RAISING_DATASETS = """
    import sys
    import numpy as np
    import paddle
    from paddlemix.data.loader import ImageTextLoader
    from paddlemix.data.samples import BadSample
    from paddlemix.data.streaming import StreamingDataset
    from paddlemix.processors import SimpleTokenizer

    class Raising(paddle.io.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, index):
            if index == 5:
                raise RuntimeError("dataset bug at sample 5")
            return {"image": np.zeros((3, 4, 4), "float32"), "caption": "fine"}

    class AllBad(StreamingDataset):
        def read(self, path, keep):
            for position in range(6):
                if keep(position):
                    yield BadSample("missing_file", f"{path}:{position}")

    kind, workers = sys.argv[1], int(sys.argv[2])
    dataset = Raising() if kind == "map" else AllBad(["part-0"], transform=None, epochs=1)
    tokenizer = SimpleTokenizer(context_length=8)
    for batch in ImageTextLoader(dataset, batch_size=2, tokenizer=tokenizer, num_workers=workers, shuffle=False):
        pass
    print("finished without an error")
"""


@pytest.mark.parametrize("kind, error", [("map", "RuntimeError: dataset bug at sample 5"),
                                         ("stream", "AllSamplesBadError")])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_exception_in_dataset_code_stops_the_loader_instead_of_hanging(tmp_path, kind, error, workers):
    script = tmp_path / "raising.py"
    script.write_text(textwrap.dedent(RAISING_DATASETS))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, str(script), kind, str(workers)], capture_output=True, text=True,
                            timeout=HANG_TIMEOUT, env=env, cwd=tmp_path)
    assert result.returncode != 0 and "finished without an error" not in result.stdout
    assert error in result.stderr, result.stderr[-3000:]


# ---------------------------------------------------------------- flags and templates


@pytest.mark.parametrize("flag", ["--per_device_train_batch_size", "--per_device_eval_batch_size"])
@pytest.mark.parametrize("value", ["0", "-4"])
def test_a_batch_size_below_one_fails_naming_the_flag(flag, value):
    with pytest.raises(ValueError, match=f"{flag} must be >= 1.*got {value}"):
        parse_arguments(["--output_dir", "x", flag, value])


def test_cli_batch_size_below_one_fails_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["zeroshot", "--model", "m", "--images", str(tmp_path), "--labels", "a,b", "--batch-size", "0"])
    assert "--batch-size: must be >= 1, got 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model_dir(setup, tmp_path_factory):
    paddle.seed(0)
    directory = tmp_path_factory.mktemp("model")
    AutoModel.from_config(AutoConfig.from_pretrained(str(setup / "tiny.json"))).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("template", ["a {} and a {}", "a {x} {}", "a photo", "a {"])
def test_a_template_without_exactly_one_placeholder_fails_naming_it(tiny_model_dir, template):
    model = AutoModel.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ValueError, match="must hold exactly one {} for the class name") as info:
        build_zero_shot_classifier(model, get_tokenizer(model), ["cat"], ["a photo of a {}", template])
    assert repr(template) in str(info.value)


def test_a_bad_template_in_templates_txt_fails_naming_file_and_line(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "a.png").write_bytes(noise_png())
    (tmp_path / "templates.txt").write_text("# prompts\na photo of a {}\na {x} {}\n")
    with pytest.raises(ValueError, match=r"templates.txt:3: template 'a \{x\} \{\}' must hold exactly one \{\}"):
        ClassificationSet(str(tmp_path))


def test_cli_bad_template_fails_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["zeroshot", "--model", "m", "--images", str(tmp_path), "--labels", "a", "--templates", "a {} and a {}"])
    assert "--templates: template 'a {} and a {}' must hold exactly one {}" in capsys.readouterr().err


# ---------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def bad_shapes(setup, tmp_path_factory):
    """The shapes set with one bad train record of each kind (and the bomb PNG) added."""
    root = tmp_path_factory.mktemp("bad_shapes")
    shutil.copytree(setup / "shapes", root / "shapes")
    train = root / "shapes" / "annotations" / "coco_karpathy_train.json"
    records = json.loads(train.read_text())
    bad = bad_records(root / "shapes" / "images", records[0]["image"])
    train.write_text(json.dumps(records[:5] + bad + records[5:]))
    return root / "shapes", len(records)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_training_with_a_bad_sample_of_each_kind_finishes_and_counts_them(setup, bad_shapes, tmp_path, workers):
    shapes, good = bad_shapes
    steps = -(-(good + sum(EXPECTED_SKIPS.values())) // 16)  # one epoch: every bad sample is met
    args = [*flags(setup, tmp_path / "out", "--max_steps", str(steps), "--save_steps", "100",
                   "--dataloader_num_workers", str(workers))]
    args[args.index("--data_dir") + 1] = str(shapes)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "paddlemix/examples/clip/run_pretrain_dist.py"), *args],
                            capture_output=True, text=True, timeout=HANG_TIMEOUT * 2,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    last = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()
            if '"loss"' in line][-1]
    assert last["step"] == steps
    assert {key.split("/")[1]: n for key, n in last.items() if key.startswith("skipped/")} == EXPECTED_SKIPS
    assert "bomb.png: image_too_large (Image size (225000000 pixels)" in output


def test_evaluation_with_a_bomb_png_finishes_and_counts_it(setup, tiny_model_dir, tmp_path):
    folder = tmp_path / "colours"
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
        (folder / "images" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(folder / "images" / name / "a.png")
    (folder / "images" / "red" / "bomb.png").write_bytes(bomb_png())
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "paddlemix/examples/clip/run_zero_shot_eval.py"), "--model",
         str(tiny_model_dir), "--classification_eval", str(folder), "--output_dir", str(tmp_path / "out"),
         "--per_device_eval_batch_size", "2"],
        capture_output=True, text=True, timeout=HANG_TIMEOUT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["colours"]
    assert metrics["num_samples"] == 2 and metrics["skipped"] == 1


def test_cli_with_a_bomb_png_skips_and_counts_it(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "red.png").write_bytes(noise_png())
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    assert cli_main(["zeroshot", "--model", str(tiny_model_dir), "--images", str(tmp_path), "--labels", "red,blue"]) == 0
    output = capsys.readouterr().out
    assert "red.png: " in output and "1 images classified, 1 unreadable skipped" in output


def test_pack_skips_each_bad_record_and_its_rerun_completes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"good{index}.png").write_bytes(noise_png((40 + index, 30)))
    records = [{"image": "good0.png", "caption": "first"}, *bad_records(images, "good0.png"),
               {"image": "good1.png", "caption": "second"}, {"image": "good2.png", "caption": "third"}]
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps(records))
    source = {"kind": "coco_karpathy"}

    def crashing_after(count):
        for index, record in enumerate(coco_karpathy_records(annotations, images)):
            if index == count:
                raise KeyboardInterrupt("killed")
            yield record

    with pytest.raises(KeyboardInterrupt):  # killed just after the bad records, mid-shard
        pack(crashing_after(6), tmp_path / "out", shard_size=1, source=source)
    manifest = pack(coco_karpathy_records(annotations, images), tmp_path / "out", shard_size=1, source=source)
    assert manifest["complete"] and manifest["total"] == 3
    assert manifest["skipped"] == EXPECTED_SKIPS
    again = pack(coco_karpathy_records(annotations, images), tmp_path / "out", shard_size=1, source=source)
    assert again == manifest
