"""COCO 2017 as cocodataset.org distributes it: `--task_name coco2017` and captions_<split>2017.json
paths, one sample per caption, broken records skipped by reason, and the val split for retrieval."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.data.coco2017 import CocoCaptionFile, PackedStrings
from paddlemix.data.datasets import build_dataset, validation_set
from paddlemix.data.loader import ImageTextLoader
from paddlemix.data.samples import BadSample
from paddlemix.evaluation.datasets import caption_set
from paddlemix.processors import SimpleTokenizer, image_transform
from paddlemix.trainer.arguments import DataArguments
from paddlemix.trainer.run import validation_split

TRANSFORM = image_transform(16, is_train=False)
IMAGE_IDS = {"train": (391895, 522418, 184613), "val": (179765, 190236)}
CAPTIONS_PER_IMAGE = 5
MISSING_FILE_ID = 77  # an "images" entry whose file was never written
# Broken train annotations, appended after the good ones, and the reason each is skipped under.
BROKEN = [
    ({"image_id": 999999, "id": 9001, "caption": "an image_id without an entry"}, "unknown_image_id"),
    ({"image_id": 391895, "id": 9002, "caption": 42}, "bad_field"),
    ({"image_id": 391895, "id": 9003, "caption": "   "}, "empty_caption"),
    ("not an object", "bad_field"),
    ({"image_id": MISSING_FILE_ID, "id": 9004, "caption": "its file is missing"}, "missing_file"),
    ({"image_id": 5, "id": 9005, "caption": "its image entry has no file_name"}, "unknown_image_id"),
]


def image_entry(image_id: int, split: str) -> dict:
    return {"license": 3, "file_name": f"{image_id:012d}.jpg", "coco_url": f"http://images.cocodataset.org/"
            f"{split}2017/{image_id:012d}.jpg", "height": 24, "width": 32, "date_captured": "2013-11-14 11:18:45",
            "flickr_url": "http://farm5.staticflickr.com/x.jpg", "id": image_id}


def write_coco2017(root: Path) -> Path:
    """A tiny COCO 2017 root in the distributed layout (train2017/, val2017/, annotations/), each image
    with 5 captions interleaved as in the real files, and the BROKEN records in the train file."""
    for split, ids in IMAGE_IDS.items():
        (root / f"{split}2017").mkdir(parents=True)
        images = [image_entry(image_id, split) for image_id in ids]
        for entry in images:
            pixels = np.random.default_rng(entry["id"]).integers(0, 255, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{split}2017" / entry["file_name"], quality=95)
        annotations = [{"image_id": image_id, "id": 100 * image_id + k, "caption": f"caption {k} of image {image_id}\n"}
                       for k in range(CAPTIONS_PER_IMAGE) for image_id in ids]
        if split == "train":
            images += [image_entry(MISSING_FILE_ID, split), {"id": 5, "file_name": None}]
            annotations += [record for record, _ in BROKEN]
        content = {"info": {"description": "COCO 2017 Dataset", "year": 2017}, "licenses": [{"id": 3, "name": "x"}],
                   "images": images, "annotations": annotations}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(content))
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_coco2017(tmp_path_factory.mktemp("coco2017"))


GOOD_TRAIN = len(IMAGE_IDS["train"]) * CAPTIONS_PER_IMAGE


def test_coco2017_reads_one_sample_per_caption_with_images_from_the_split_folder(coco):
    dataset = build_dataset("coco2017", TRANSFORM, data_dir=str(coco))

    assert len(dataset) == GOOD_TRAIN + len(BROKEN)
    samples = [dataset[index] for index in range(GOOD_TRAIN)]
    assert [s["caption"] for s in samples[:4]] == ["caption 0 of image 391895", "caption 0 of image 522418",
                                                  "caption 0 of image 184613", "caption 1 of image 391895"]
    assert samples[0]["image"].shape == (3, 16, 16)
    keys = {s["caption"].split()[-1]: set() for s in samples}
    for sample in samples:
        keys[sample["caption"].split()[-1]].add(sample["image_key"])
    assert all(len(image_keys) == 1 for image_keys in keys.values()) and len(set.union(*keys.values())) == 3
    assert dataset.image_folder == coco / "train2017"


def test_each_broken_record_is_a_bad_sample_named_by_file_and_annotation_index(coco, caplog):
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        dataset = build_dataset("coco2017", TRANSFORM, data_dir=str(coco))
    annotation = coco / "annotations" / "captions_train2017.json"
    assert "1 \"images\" entries cannot be used, e.g. images[4] has 'file_name': None" in caplog.text

    bad = [dataset[GOOD_TRAIN + offset] for offset in range(len(BROKEN))]

    assert all(isinstance(sample, BadSample) for sample in bad)
    assert [sample.reason for sample in bad] == [reason for _, reason in BROKEN]
    for offset, sample in enumerate(bad):
        assert sample.where.startswith(f"{annotation} annotations[{GOOD_TRAIN + offset}]"), sample.where
    assert "image_id 999999 has no usable entry" in bad[0].detail and "int" in bad[1].detail
    assert bad[4].where.endswith(str(coco / "train2017" / f"{MISSING_FILE_ID:012d}.jpg"))


def test_the_loader_skips_and_counts_the_broken_records_and_keys_each_image_once(coco, caplog):
    dataset = build_dataset("coco2017", TRANSFORM, data_dir=str(coco))
    loader = ImageTextLoader(dataset, batch_size=len(dataset), tokenizer=SimpleTokenizer(context_length=12),
                             shuffle=False, log_every=1)
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        (batch,) = list(loader)
    assert int(batch["image"].shape[0]) == GOOD_TRAIN
    assert ("skipped 2 bad_field, 1 empty_caption, 1 missing_file, 2 unknown_image_id" in caplog.text)
    image_keys = batch["image_keys"].numpy()
    assert len(set(image_keys.tolist())) == 3 and (image_keys[:3] == image_keys[3:6]).all()  # interleaved captions
    assert len(set(batch["caption_keys"].numpy().tolist())) == GOOD_TRAIN


def test_a_captions_json_path_takes_its_images_beside_annotations_or_from_data_dir(coco, tmp_path):
    annotation = coco / "annotations" / "captions_val2017.json"
    assert build_dataset(str(annotation), TRANSFORM).image_folder == coco / "val2017"
    assert build_dataset(str(annotation), TRANSFORM, data_dir=str(tmp_path)).image_folder == tmp_path

    renamed = tmp_path / "my_coco.json"  # the format is told by the content, the folder only by the name
    renamed.write_text(annotation.read_text())
    with pytest.raises(ValueError, match="pass the image folder as --data_dir"):
        build_dataset(str(renamed), TRANSFORM)
    dataset = build_dataset(str(renamed), TRANSFORM, data_dir=str(coco / "val2017"))
    assert len(dataset) == 10 and dataset[0]["caption"] == "caption 0 of image 179765"
    with pytest.raises(ValueError, match="COCO captions file.*leave both flags out"):
        build_dataset(str(annotation), TRANSFORM, image_column="file_name")


def test_coco2017_without_data_dir_or_files_says_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs --data_dir.*cocodataset.org"):
        build_dataset("coco2017", TRANSFORM)
    with pytest.raises(FileNotFoundError, match=r"no annotations/captions_train2017.json.*cocodataset.org"):
        build_dataset("coco2017", TRANSFORM, data_dir=str(tmp_path))


def test_the_val_split_feeds_retrieval_with_captions_grouped_per_image(coco):
    annotation, images = validation_split(DataArguments(task_name="coco2017", data_dir=str(coco)))
    assert (annotation, images) == (coco / "annotations" / "captions_val2017.json", coco / "val2017")
    train_file = str(coco / "annotations" / "captions_train2017.json")
    assert validation_set(train_file) == (annotation, images)

    paths, captions, owner = caption_set(annotation, images)

    assert paths == [str(coco / "val2017" / f"{image_id:012d}.jpg") for image_id in IMAGE_IDS["val"]]
    assert len(captions) == 10 and owner == [0, 1] * 5
    assert all(captions[i].endswith(str(IMAGE_IDS["val"][owner[i]])) for i in range(10))


def test_retrieval_leaves_out_unusable_annotations_and_images_without_captions(coco):
    paths, captions, owner = caption_set(coco / "annotations" / "captions_train2017.json", coco / "train2017")
    assert len(paths) == 4  # the 3 images, and the one whose file is missing (its evaluation skips it)
    assert len(captions) == GOOD_TRAIN + 1 and max(owner) == 3


def test_the_parsed_file_keeps_no_python_object_per_row(coco):
    parsed = CocoCaptionFile(coco / "annotations" / "captions_train2017.json")
    assert isinstance(parsed.captions, PackedStrings) and isinstance(parsed.file_names, PackedStrings)
    assert parsed.annotation_image.dtype == np.int32 and parsed.captions.buffer.dtype == np.uint8
    assert set(parsed.problems) == {GOOD_TRAIN + offset for offset, (_, reason) in enumerate(BROKEN)
                                    if reason != "missing_file"}
    assert parsed.captions[0] == "caption 0 of image 391895"
    strings = PackedStrings(["", "naïve café", "\ud800 lone surrogate", "x"])
    assert [strings[i] for i in range(4)] == ["", "naïve café", "\ud800 lone surrogate", "x"]


def test_training_on_coco2017_evaluates_retrieval_on_its_val_split(coco, tmp_path):
    from trainer_helpers import TINY, flags, run_to_end

    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    args = flags(tmp_path, tmp_path / "out", "--max_steps", "3", "--per_device_train_batch_size", "8",
                 "--do_eval", "--eval_steps", "3", "--save_steps", "100")
    args[args.index("--task_name") + 1] = "coco2017"
    args[args.index("--data_dir") + 1] = str(coco)

    run_to_end(args)

    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    evaluation = next(r for r in records if "eval/retrieval/image_to_text_R@1" in r)
    assert evaluation["eval/retrieval/num_images"] == 2 and evaluation["eval/retrieval/num_captions"] == 10
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_the_evaluator_retrieves_on_coco2017_by_name_or_by_its_captions_file(coco):
    from paddlemix.tools.zero_shot_eval import retrieval_set

    val = (coco / "annotations" / "captions_val2017.json", coco / "val2017")
    assert retrieval_set("coco2017", str(coco)) == val
    assert retrieval_set(str(val[0]), None) == val  # images in val2017/ beside annotations/
    assert retrieval_set(str(val[0]), str(coco / "elsewhere")) == (val[0], coco / "elsewhere")
