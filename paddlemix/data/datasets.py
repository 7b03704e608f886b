"""`--task_name` -> a dataset: the one place that knows every supported input format."""

from pathlib import Path
from typing import Callable, Optional

from .coco import CocoKarpathyDataset, coco_karpathy
from .csv_dataset import CsvDataset
from .laion import LaionDataset
from .webdataset_shards import TarShardDataset

TASK_NAME_FORMS = (
    "coco_clip (COCO Karpathy split under --data_dir or $PPMIX_HOME/datasets/coco)",
    "FILE.json (a coco_karpathy-format annotation file; images under --data_dir, else ../images)",
    "FILE.csv / FILE.tsv (open_clip csv: --csv_img_key, --csv_caption_key, --csv_separator)",
    "'name-{000000..000123}.tar' (webdataset tar shards)",
    "FILE.filelist (LAION part files, one path per line)",
)


def build_dataset(
    task_name: str,
    transform: Callable,
    split: str = "train",
    data_dir: Optional[str] = None,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_separator: str = "\t",
    seed: int = 0,
    num_samples: Optional[int] = None,
):
    """The dataset `task_name` names (see TASK_NAME_FORMS), yielding transformed images and captions."""
    if task_name == "coco_clip":
        return coco_karpathy(split, transform, data_dir)
    if ".tar" in task_name:
        return TarShardDataset(task_name, transform, seed=seed, num_samples=num_samples)
    path = Path(task_name).expanduser()
    if path.suffix == ".json":
        if data_dir:
            image_root = Path(data_dir)
        else:
            image_root = path.parent.parent / "images" if (path.parent.parent / "images").is_dir() else path.parent
        return CocoKarpathyDataset(path, image_root, transform)
    if path.suffix in (".csv", ".tsv"):
        return CsvDataset(path, transform, csv_img_key, csv_caption_key, csv_separator)
    if path.is_file():
        return LaionDataset(path, transform, seed=seed, num_samples=num_samples)
    forms = "\n  ".join(TASK_NAME_FORMS)
    raise ValueError(f"--task_name {task_name!r} is not a known dataset or an existing file. Accepted:\n  {forms}")
