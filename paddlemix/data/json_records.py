"""Image-caption records in a JSON file: a JSON list of objects (coco_karpathy's format) or JSON lines
(one object per line), the two forms HF's `load_dataset("json")` reads.

A record holds an image path under `image_key` (`--image_column`) and a caption under `caption_key`
(`--caption_column`), or a list of captions (coco_karpathy's val/test records hold COCO's five): one
sample per caption. Image paths that are not absolute resolve against `image_root`.
"""

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import paddle

from .samples import BadSample, image_file_sample

IMAGE_KEY, CAPTION_KEY = "image", "caption"  # coco_karpathy's keys: the defaults for JSON files


def read_json(path: Union[str, Path]) -> Tuple[object, Optional[List[int]]]:
    """(value, None) for a file holding one JSON value; (list of the lines' values, their line numbers)
    for JSON lines (also when the file is named .json, as HF accepts). A line that is not JSON is a
    BadSample in its place, naming file and line; a file with no JSON in it at all is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    whole_file_error = None
    if path.suffix != ".jsonl":
        try:
            return json.loads(text), None
        except json.JSONDecodeError as error:
            whole_file_error = error
    values, numbers = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            values.append(BadSample("bad_field", f"{path}:{number}", f"the line is not valid JSON ({error.msg})"))
        numbers.append(number)
    if whole_file_error is not None and all(isinstance(value, BadSample) for value in values):
        raise ValueError(f"{path}: not valid JSON, nor JSON lines ({whole_file_error})") from whole_file_error
    return values, numbers


class JsonRecordsDataset(paddle.io.Dataset):
    """(image, caption) pairs of a JSON list or JSON-lines file of records: one pair per caption.

    `__getitem__` returns {"image": transform(image), "caption": str, "image_key": int}, or a BadSample
    (missing or broken image, empty caption, a line that is not JSON, a record or field of the wrong
    type) that the collator skips and counts. `content`: what read_json(path) returned, when the
    caller has read the file already.
    """

    def __init__(self, path: Union[str, Path], image_root: Union[str, Path], transform: Callable,
                 image_key: str = IMAGE_KEY, caption_key: str = CAPTION_KEY, content: Optional[Tuple] = None):
        self.annotation = Path(path)
        records, self.line_numbers = read_json(self.annotation) if content is None else content
        if not isinstance(records, list):
            raise ValueError(f"{self.annotation}: expected a JSON list of records or JSON lines (coco_karpathy "
                             f"format: [{{\"{IMAGE_KEY}\": path, \"{CAPTION_KEY}\": text}}, ...]), got a "
                             f"{type(records).__name__}")
        first, record = next(((i, r) for i, r in enumerate(records) if isinstance(r, dict)), (None, {}))
        missing = [key for key in (image_key, caption_key) if first is not None and key not in record]
        if missing:
            raise ValueError(f"{self.where(first)}: the first record has no "
                             f"{' or '.join(map(repr, missing))} (its keys: {sorted(record)}); name the record's "
                             "image path and caption keys with --image_column and --caption_column")
        self.records: List = records
        self.image_root = Path(image_root)
        self.transform = transform
        self.image_key, self.caption_key = image_key, caption_key
        self.pairs = []  # (record index, caption); a record or field of the wrong type is judged per sample
        for index, record in enumerate(records):
            captions = record.get(caption_key, "") if isinstance(record, dict) else None
            for caption in captions if isinstance(captions, list) else [captions]:
                self.pairs.append((index, caption))

    def where(self, record_index: int) -> str:
        """`file[index]` of a JSON list's record, `file:line` of a JSON line's."""
        if self.line_numbers is None:
            return f"{self.annotation}[{record_index}]"
        return f"{self.annotation}:{self.line_numbers[record_index]}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Union[Dict, BadSample]:
        record_index, caption = self.pairs[index]
        record = self.records[record_index]
        if isinstance(record, BadSample):
            return record
        image = record.get(self.image_key) if isinstance(record, dict) else None
        if not isinstance(image, str):
            what = ("is not an object" if not isinstance(record, dict)
                    else f"has {self.image_key!r}: {image!r:.80}, not a path")
            return BadSample("bad_field", self.where(record_index), f"the record {what}")
        return image_file_sample(str(self.image_root / image), caption, self.transform)
