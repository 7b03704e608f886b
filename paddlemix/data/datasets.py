"""`--task_name` -> a dataset: the one place that knows every supported input format."""

from pathlib import Path
from typing import Callable, Optional, Tuple

from .coco import annotation_file, coco_karpathy, coco_root
from .coco2017 import Coco2017Dataset, coco2017, coco2017_files, image_folder_of, is_coco_captions
from .csv_dataset import CAPTION_COLUMN, IMAGE_COLUMN, CsvDataset
from .json_records import CAPTION_KEY, IMAGE_KEY, JsonRecordsDataset, read_json
from .laion import LaionDataset
from .webdataset_shards import TarShardDataset

TASK_NAME_FORMS = (
    "coco_clip (COCO Karpathy split under --data_dir or $PPMIX_HOME/datasets/coco)",
    "coco2017 (COCO 2017 as cocodataset.org distributes it; its root as --data_dir)",
    "captions_<split>2017.json (a COCO captions file; images under --data_dir, else <split>2017/ beside annotations/)",
    "FILE.json / FILE.jsonl (a JSON list or JSON lines of records: --image_column, default 'image', "
    "--caption_column, default 'caption'; images under --data_dir, else ../images, else the file's folder)",
    "FILE.csv / FILE.tsv (open_clip csv: --image_column, default 'filepath', --caption_column, default 'title', "
    "--csv_separator; images under --data_dir, else the file's folder)",
    "'name-{000000..000123}.tar' (webdataset tar shards)",
    "FILE.filelist (LAION part files, one path per line)",
)


def build_dataset(
    task_name: str,
    transform: Callable,
    split: str = "train",
    data_dir: Optional[str] = None,
    image_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    csv_separator: str = "\t",
    seed: int = 0,
    num_samples: Optional[int] = None,
):
    """The dataset `task_name` names (see TASK_NAME_FORMS), yielding transformed images and captions.
    `image_column` / `caption_column`: the record keys of a CSV or JSON file (None: the format's default)."""
    if task_name == "coco_clip":
        return coco_karpathy(split, transform, data_dir)
    if task_name == "coco2017":
        return coco2017(split, transform, data_dir)
    if ".tar" in task_name:
        return TarShardDataset(task_name, transform, seed=seed, num_samples=num_samples)
    path = Path(task_name).expanduser()
    if path.suffix in (".json", ".jsonl"):
        return json_dataset(path, transform, data_dir, image_column, caption_column)
    if path.suffix in (".csv", ".tsv"):
        return CsvDataset(path, transform, image_column or IMAGE_COLUMN, caption_column or CAPTION_COLUMN,
                          csv_separator, image_root=data_dir)
    if path.is_file():
        return LaionDataset(path, transform, seed=seed, num_samples=num_samples)
    forms = "\n  ".join(TASK_NAME_FORMS)
    raise ValueError(f"--task_name {task_name!r} is not a known dataset or an existing file. Accepted:\n  {forms}")


def json_dataset(path: Path, transform: Callable, data_dir: Optional[str] = None, image_column: Optional[str] = None,
                 caption_column: Optional[str] = None):
    """A COCO captions file or a file of records, told apart by what it holds (the file is read once)."""
    content = read_json(path)
    if is_coco_captions(content[0]):
        if image_column or caption_column:
            raise ValueError(f"--image_column / --caption_column: {path} is a COCO captions file, whose fields are "
                             "fixed (images[].file_name, annotations[].caption); leave both flags out")
        return Coco2017Dataset(path, Path(data_dir) if data_dir else image_folder_of(path), transform, content[0])
    if data_dir:
        image_root = Path(data_dir)
    else:  # the coco_karpathy layout: annotations/ beside images/
        image_root = path.parent.parent / "images" if (path.parent.parent / "images").is_dir() else path.parent
    return JsonRecordsDataset(path, image_root, transform, image_column or IMAGE_KEY, caption_column or CAPTION_KEY,
                              content)


def validation_set(task_name: str, data_dir: Optional[str] = None) -> Optional[Tuple[Path, Path]]:
    """(annotation file, image folder) of the val split that goes with `task_name`, for retrieval
    (evaluation.datasets.caption_set reads both COCO formats); None where the data has none.

    coco_clip: the Karpathy val split; coco2017: captions_val2017.json and val2017/; a
    captions_<split>2017.json: captions_val2017.json beside it, images in val2017/ beside annotations/.
    """
    if task_name == "coco_clip":
        root = coco_root(data_dir)
        return annotation_file(root, "val"), root / "images"
    if task_name == "coco2017":
        return coco2017_files("val", data_dir)
    path = Path(task_name).expanduser()
    if path.suffix == ".json" and path.stem.startswith("captions_") and path.stem.endswith("2017"):
        val = path.with_name("captions_val2017.json")
        return (val, image_folder_of(val)) if val.is_file() else None
    return None
