"""COCO captions in the Karpathy split (`--task_name coco_clip`), and any data in the same JSON format.

Layout: `<root>/annotations/coco_karpathy_{train,val,test}.json` and `<root>/images/`. Train records
are `{"caption": str, "image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"}`;
val/test records may hold a list of captions (5 per image in COCO) for retrieval.
"""

import tarfile
from pathlib import Path
from typing import Callable, Optional

from ..models.hub import download_or_explain, ppmix_home
from .json_records import JsonRecordsDataset

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


# coco_karpathy files are JSON lists of records with "image" and "caption" (a string, or a list of them)
CocoKarpathyDataset = JsonRecordsDataset


def coco_karpathy(split: str, transform: Callable, data_dir: Optional[str] = None) -> CocoKarpathyDataset:
    """The `split` ('train', 'val' or 'test') of COCO Karpathy under `coco_root(data_dir)`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = coco_root(data_dir)
    return CocoKarpathyDataset(annotation_file(root, split), root / "images", transform)
