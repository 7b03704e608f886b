"""Image-caption pairs listed in a CSV/TSV file (open_clip's `--dataset-type csv`).

E.g. Conceptual Captions: `title<TAB>filepath` with a header row. Image paths that are not
absolute resolve against `image_root`, by default the CSV file's directory. A row that is not valid
UTF-8 is skipped as `invalid_utf8`, named by file and line.
"""

import csv
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import paddle

from .samples import BadSample, image_file_sample

IMAGE_COLUMN, CAPTION_COLUMN = "filepath", "title"  # open_clip's --csv-img-key / --csv-caption-key defaults


class CsvDataset(paddle.io.Dataset):
    """`__getitem__` returns {"image": transform(image), "caption": str} or a BadSample."""

    def __init__(
        self,
        path: Union[str, Path],
        transform: Callable,
        img_key: str = IMAGE_COLUMN,
        caption_key: str = CAPTION_COLUMN,
        separator: str = "\t",
        image_root: Optional[Union[str, Path]] = None,
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CSV file {path} does not exist")
        # surrogateescape: invalid bytes survive the read as lone surrogates, so the row, not the file, is skipped
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle, delimiter=separator)
            columns = reader.fieldnames or []
            missing = [key for key in (img_key, caption_key) if key not in columns]
            if missing:
                raise ValueError(
                    f"{path}: no column {', '.join(map(repr, missing))} (columns: {columns}); set --image_column "
                    "(or --csv_img_key), --caption_column (or --csv_caption_key), or --csv_separator "
                    f"(now {separator!r})"
                )
            rows = [(row[img_key] or "", row[caption_key], f"{path}:{reader.line_num}") for row in reader]
        self.root = path.parent if image_root is None else Path(image_root)
        self.images = [str(self.root / image) for image, _, _ in rows]  # an absolute path stays absolute
        self.captions = [caption for _, caption, _ in rows]
        self.lines = [line for _, _, line in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Union[Dict, BadSample]:
        if not (_is_utf8(self.images[index]) and _is_utf8(self.captions[index] or "")):
            return BadSample("invalid_utf8", self.lines[index])
        return image_file_sample(self.images[index], self.captions[index], self.transform)


def _is_utf8(text: str) -> bool:
    """False for text read with errors="surrogateescape" from bytes that were not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
