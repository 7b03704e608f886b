"""--image_column / --caption_column (HF run_clip.py's names; --csv_img_key / --csv_caption_key are the
same setting) for CSV files and JSON / JSON-lines files of records, and where their image paths resolve."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.data.datasets import build_dataset
from paddlemix.data.samples import BadSample
from paddlemix.processors import image_transform
from paddlemix.trainer.arguments import DataArguments, parse_arguments

TRANSFORM = image_transform(16, is_train=False)
RECORDS = [{"image_path": "img/a.jpg", "caption": "a cat", "id": 1}, {"image_path": "img/b.jpg", "caption": "a dog"}]


def write_images(folder: Path) -> None:
    for seed, name in enumerate(("a.jpg", "b.jpg")):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img" / name)


def captions(dataset):
    return [dataset[index]["caption"] for index in range(len(dataset))]


@pytest.mark.parametrize("spelling", [("--image_column", "--caption_column"), ("--csv_img_key", "--csv_caption_key")])
def test_either_spelling_sets_both_and_they_must_agree(spelling):
    (data_args,) = parse_arguments([spelling[0], "image_path", spelling[1], "text"], (DataArguments,))
    assert (data_args.image_column, data_args.caption_column) == ("image_path", "text")


def test_both_spellings_may_repeat_one_value_but_not_differ():
    (data_args,) = parse_arguments(["--image_column", "p", "--csv_img_key", "p"], (DataArguments,))
    assert data_args.image_column == "p"
    with pytest.raises(SystemExit, match="--image_column 'p' and --csv_img_key 'q' are two spellings"):
        parse_arguments(["--image_column", "p", "--csv_img_key", "q"], (DataArguments,))
    assert DataArguments().image_column is None  # the format's own default (CSV: filepath, JSON: image)


def test_csv_columns_by_name_with_paths_relative_to_the_file_or_data_dir(tmp_path):
    write_images(tmp_path / "data")
    path = tmp_path / "data" / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_path", "caption"])
        writer.writeheader()
        writer.writerows({"image_path": r["image_path"], "caption": r["caption"]} for r in RECORDS)

    dataset = build_dataset(str(path), TRANSFORM, image_column="image_path", caption_column="caption",
                            csv_separator=",")
    assert captions(dataset) == ["a cat", "a dog"]
    moved = tmp_path / "elsewhere.csv"
    moved.write_text(path.read_text())
    assert isinstance(build_dataset(str(moved), TRANSFORM, image_column="image_path", caption_column="caption",
                                    csv_separator=",")[0], BadSample)
    from_data_dir = build_dataset(str(moved), TRANSFORM, data_dir=str(tmp_path / "data"), image_column="image_path",
                                  caption_column="caption", csv_separator=",")
    assert captions(from_data_dir) == ["a cat", "a dog"]
    with pytest.raises(ValueError, match=r"no column 'filepath'.*--image_column \(or --csv_img_key\)"):
        build_dataset(str(path), TRANSFORM, csv_separator=",")


@pytest.mark.parametrize("name, text", [
    ("pairs.json", json.dumps(RECORDS)),
    ("pairs.jsonl", "\n".join(map(json.dumps, RECORDS)) + "\n"),
    ("lines.json", "\n".join(map(json.dumps, RECORDS)) + "\n\n"),  # JSON lines named .json, as HF reads them
])
def test_json_list_and_json_lines_of_records_by_column_name(tmp_path, name, text):
    write_images(tmp_path)
    (tmp_path / name).write_text(text)

    dataset = build_dataset(str(tmp_path / name), TRANSFORM, image_column="image_path")

    assert captions(dataset) == ["a cat", "a dog"] and dataset[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"first record has no 'image'.*--image_column and --caption_column"):
        build_dataset(str(tmp_path / name), TRANSFORM)


def test_a_broken_json_line_or_record_is_a_bad_sample_naming_file_and_line(tmp_path):
    write_images(tmp_path)
    lines = [json.dumps(RECORDS[0]), '{"image_path": "img/b.jpg", "caption": ', json.dumps({"image_path": 5,
             "caption": "x"}), json.dumps(RECORDS[1])]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")

    dataset = build_dataset(str(tmp_path / "pairs.jsonl"), TRANSFORM, image_column="image_path")

    samples = [dataset[index] for index in range(len(dataset))]
    assert samples[0]["caption"] == "a cat" and samples[3]["caption"] == "a dog"
    assert samples[1].reason == "bad_field" and samples[1].where == f"{tmp_path / 'pairs.jsonl'}:2"
    assert "not valid JSON" in samples[1].detail
    assert samples[2].where == f"{tmp_path / 'pairs.jsonl'}:3" and "'image_path': 5, not a path" in samples[2].detail


def test_a_file_that_is_no_json_at_all_fails_naming_it(tmp_path):
    (tmp_path / "broken.json").write_text("[{\"image\": \"a.jpg\",\n")
    with pytest.raises(ValueError, match="broken.json: not valid JSON, nor JSON lines"):
        build_dataset(str(tmp_path / "broken.json"), TRANSFORM)
