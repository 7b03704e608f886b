"""COCO captions in the Karpathy split (`--task_name coco_clip`), and any data in the same JSON format.

Layout: `<root>/annotations/coco_karpathy_{train,val,test}.json` and `<root>/images/`. Train records
are `{"caption": str, "image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"}`;
val/test records may hold a list of captions (5 per image in COCO) for retrieval.
"""

import json
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import paddle

from ..models.hub import download_or_explain, ppmix_home
from .samples import BadSample, image_file_sample

# PaddleMIX's packaging of COCO 2014 images with the Karpathy-split annotations (unpacks to coco/).
COCO_URL = "https://bj.bcebos.com/paddlemix/datasets/coco.tar.gz"
SPLITS = ("train", "val", "test")


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"coco_karpathy_{split}.json"


def coco_root(data_dir: Optional[str] = None) -> Path:
    """The COCO root: `data_dir`, else `$PPMIX_HOME/datasets/coco`, downloaded there when absent."""
    if data_dir:
        root = Path(data_dir).expanduser()
        if not (root / "annotations").is_dir():
            raise FileNotFoundError(
                f"--data_dir {root}: no annotations/ folder. A COCO root holds "
                f"annotations/coco_karpathy_{{train,val,test}}.json and images/"
            )
        return root
    root = ppmix_home() / "datasets" / "coco"
    if (root / "annotations").is_dir():
        return root
    archive = root.parent / "coco.tar.gz"
    download_or_explain(
        COCO_URL,
        archive,
        f"COCO (Karpathy split) is not in {root}. Put annotations/coco_karpathy_{{train,val,test}}.json and "
        f"images/ (train2014/, val2014/) in {root}, or pass --data_dir DIR with that layout",
    )
    with tarfile.open(archive) as tar:
        tar.extractall(root.parent, filter="data")
    archive.unlink()
    return root


class CocoKarpathyDataset(paddle.io.Dataset):
    """(image, caption) pairs of a coco_karpathy-format annotation file: one pair per caption.

    `__getitem__` returns {"image": transform(image), "caption": str}, or a BadSample (missing or
    broken image, empty caption, a record or field of the wrong type) that the collator skips and counts.
    """

    def __init__(self, annotation: Union[str, Path], image_root: Union[str, Path], transform: Callable):
        annotation = Path(annotation)
        if not annotation.is_file():
            raise FileNotFoundError(f"annotation file {annotation} does not exist")
        try:
            self.records: List = json.loads(annotation.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{annotation}: not valid JSON ({error})") from error
        if not isinstance(self.records, list):
            raise ValueError(f"{annotation}: expected a JSON list of records (coco_karpathy format), "
                             f"got a {type(self.records).__name__}")
        self.annotation = annotation
        self.image_root = Path(image_root)
        self.transform = transform
        self.pairs = []  # (record index, caption); a record or field of the wrong type is judged per sample
        for index, record in enumerate(self.records):
            captions = record.get("caption", "") if isinstance(record, dict) else None
            for caption in captions if isinstance(captions, list) else [captions]:
                self.pairs.append((index, caption))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Union[Dict, BadSample]:
        record_index, caption = self.pairs[index]
        record = self.records[record_index]
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str):
            what = "is not an object" if not isinstance(record, dict) else f"has 'image': {image!r:.80}, not a path"
            return BadSample("bad_field", f"{self.annotation}[{record_index}]", f"the record {what}")
        return image_file_sample(str(self.image_root / image), caption, self.transform)


def coco_karpathy(split: str, transform: Callable, data_dir: Optional[str] = None) -> CocoKarpathyDataset:
    """The `split` ('train', 'val' or 'test') of COCO Karpathy under `coco_root(data_dir)`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = coco_root(data_dir)
    return CocoKarpathyDataset(annotation_file(root, split), root / "images", transform)
