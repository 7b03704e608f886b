"""Image-caption pairs listed in a CSV/TSV file (open_clip's `--dataset-type csv`).

E.g. Conceptual Captions: `title<TAB>filepath` with a header row. Image paths that are not
absolute resolve against the CSV file's directory.
"""

import csv
from pathlib import Path
from typing import Callable, Dict, Union

import paddle

from .samples import BadSample, image_file_sample


class CsvDataset(paddle.io.Dataset):
    """`__getitem__` returns {"image": transform(image), "caption": str} or a BadSample."""

    def __init__(
        self,
        path: Union[str, Path],
        transform: Callable,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str = "\t",
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CSV file {path} does not exist")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=separator)
            columns = reader.fieldnames or []
            missing = [key for key in (img_key, caption_key) if key not in columns]
            if missing:
                raise ValueError(
                    f"{path}: no column {', '.join(map(repr, missing))} (columns: {columns}); set --csv_img_key, "
                    f"--csv_caption_key, or --csv_separator (now {separator!r})"
                )
            rows = [(row[img_key] or "", row[caption_key]) for row in reader]
        self.root = path.parent
        self.images = [str(self.root / image) for image, _ in rows]  # an absolute path stays absolute
        self.captions = [caption for _, caption in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Union[Dict, BadSample]:
        return image_file_sample(self.images[index], self.captions[index], self.transform)
