"""COCO 2017 captions as cocodataset.org distributes them (`--task_name coco2017`, or a path to a
`captions_<split>2017.json`): one sample per caption, about five per image.

Layout: `<root>/train2017/*.jpg`, `<root>/val2017/*.jpg` and `<root>/annotations/captions_{train,val}2017.json`.
An annotation file is one JSON object: {"info", "licenses", "images": [{"id", "file_name", "height",
"width", ...}], "annotations": [{"id", "image_id", "caption"}]}.

The train file is about 90 MB (118k images, 592k captions). It is parsed once and held as numpy
arrays, file names and captions packed into UTF-8 buffers: no Python object per row outlives the
parse, so forked DataLoader workers share those pages instead of copying them as reference counts change.
"""

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import paddle

from ..utils.log import logger
from .json_records import read_json
from .samples import BadSample, clean_caption, image_file_sample

SPLITS = ("train", "val")  # test2017 has no captions
DOWNLOAD_HINT = ("download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
                 "https://cocodataset.org/#download and unzip them into one folder, then pass it as --data_dir")
UNUSABLE = -1  # annotation_image of an annotation that cannot be used (see CocoCaptionFile.problems)


def annotation_path(root: Union[str, Path], split: str) -> Path:
    return Path(root) / "annotations" / f"captions_{split}2017.json"


def image_folder_of(annotation: Union[str, Path]) -> Path:
    """`<root>/<split>2017/` for `<root>/annotations/captions_<split>2017.json`, the distributed layout."""
    annotation = Path(annotation)
    if not annotation.stem.startswith("captions_"):
        raise ValueError(f"{annotation}: its image folder cannot be told from the name (COCO's are "
                         "captions_<split>2017.json, images in <split>2017/ beside annotations/); pass the image "
                         "folder as --data_dir")
    return annotation.parent.parent / annotation.stem[len("captions_"):]


def is_coco_captions(content: object) -> bool:
    """Whether a parsed JSON value is a COCO captions file (an object with "images" and "annotations")."""
    return isinstance(content, dict) and "images" in content and "annotations" in content


class PackedStrings:
    """Strings held as one UTF-8 byte buffer and offsets; `[i]` decodes the i-th."""

    def __init__(self, strings: Iterable[str]):
        encoded = [text.encode("utf-8", "surrogatepass") for text in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(data) for data in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        data = self.buffer[self.offsets[index]:self.offsets[index + 1]].tobytes()
        return data.decode("utf-8", "surrogatepass")


def _image_problem(entry: object) -> Optional[str]:
    """Why an "images" entry cannot be used, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    if isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), (int, str)):
        return f"has 'id': {entry.get('id')!r:.40}, not an id (a number or a string)"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        return f"has 'file_name': {entry.get('file_name')!r:.80}, not a file name"
    return None


class CocoCaptionFile:
    """One COCO captions file, parsed.

    file_names: PackedStrings, one per "images" entry ('' for an unusable entry).
    annotation_image: int32 [annotations], the "images" entry of each annotation, UNUSABLE where the
        annotation cannot be used; `problems` then holds why, as a BadSample named by file and index.
    captions: PackedStrings, one per annotation, stripped ('' where unusable).
    """

    def __init__(self, path: Union[str, Path], content: object = None):
        self.path = Path(path)
        content = read_json(self.path)[0] if content is None else content
        if not (is_coco_captions(content) and isinstance(content["images"], list)
                and isinstance(content["annotations"], list)):
            raise ValueError(f"{self.path}: not a COCO captions file (expected an object with \"images\" and "
                             "\"annotations\" lists, as captions_train2017.json)")
        images, annotations = content["images"], content["annotations"]
        row_of: Dict[object, int] = {}
        image_problems: Dict[int, str] = {}
        for row, entry in enumerate(images):
            problem = _image_problem(entry)
            if problem is not None:
                image_problems[row] = problem
            elif entry["id"] in row_of:
                image_problems[row] = f"repeats the id {entry['id']!r} of images[{row_of[entry['id']]}]"
            else:
                row_of[entry["id"]] = row
        if image_problems:
            logger.warning("%s: %d \"images\" entries cannot be used, e.g. images[%d] %s", self.path,
                           len(image_problems), *next(iter(image_problems.items())))
        self.file_names = PackedStrings("" if row in image_problems else entry["file_name"]
                                        for row, entry in enumerate(images))
        self.annotation_image = np.full(len(annotations), UNUSABLE, dtype=np.int32)
        self.problems: Dict[int, BadSample] = {}
        captions: List[str] = []
        for index, annotation in enumerate(annotations):
            usable = self._judge(index, annotation, row_of)
            if isinstance(usable, BadSample):
                self.problems[index] = usable
                captions.append("")
            else:
                self.annotation_image[index], caption = usable
                captions.append(caption)
        self.captions = PackedStrings(captions)

    def where(self, index: int) -> str:
        return f"{self.path} annotations[{index}]"

    def _judge(self, index: int, annotation: object, row_of: Dict) -> Union[Tuple[int, str], BadSample]:
        """(image row, stripped caption) of an annotation, or why it cannot be used."""
        where = self.where(index)
        if not isinstance(annotation, dict):
            return BadSample("bad_field", where, "the annotation is not an object")
        image_id = annotation.get("image_id")
        row = row_of.get(image_id) if isinstance(image_id, (int, str)) and not isinstance(image_id, bool) else None
        if row is None:
            return BadSample("unknown_image_id", where, f"image_id {image_id!r:.40} has no usable entry in \"images\"")
        caption = clean_caption(annotation.get("caption"), where)
        return caption if isinstance(caption, BadSample) else (row, caption)

    def __len__(self) -> int:
        return len(self.annotation_image)

    def by_image(self) -> Tuple[List[int], List[str], List[int]]:
        """(image rows with at least one usable caption, those captions, the position in the first list
        of each caption's image): retrieval's grouping of captions per image."""
        usable = np.flatnonzero(self.annotation_image != UNUSABLE)
        rows, owner = np.unique(self.annotation_image[usable], return_inverse=True)
        return rows.tolist(), [self.captions[int(index)] for index in usable], owner.tolist()


class Coco2017Dataset(paddle.io.Dataset):
    """(image, caption) pairs of a COCO captions file, images under `image_folder`: one pair per annotation.

    `__getitem__` returns {"image": transform(image), "caption": str, "image_key": int}, or a BadSample
    named by file and annotation index (an image_id without an "images" entry, a caption that is not
    text or is empty, a missing or broken image file). `content`: the parsed file, when the caller
    has read it already.
    """

    def __init__(self, annotation: Union[str, Path], image_folder: Union[str, Path], transform: Callable,
                 content: object = None):
        self.annotations = CocoCaptionFile(annotation, content)
        self.image_folder = Path(image_folder)
        self.transform = transform
        if not self.image_folder.is_dir():
            logger.warning("%s: the image folder %s does not exist: every sample will be skipped as missing_file "
                           "(%s)", annotation, self.image_folder, DOWNLOAD_HINT)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> Union[Dict, BadSample]:
        annotations = self.annotations
        if index in annotations.problems:
            return annotations.problems[index]
        path = self.image_folder / annotations.file_names[int(annotations.annotation_image[index])]
        sample = image_file_sample(str(path), annotations.captions[index], self.transform)
        if isinstance(sample, BadSample):  # name the annotation as well as the file
            return dataclasses.replace(sample, where=f"{annotations.where(index)}: {sample.where}")
        return sample


def coco2017_files(split: str, data_dir: Optional[str]) -> Tuple[Path, Path]:
    """(annotation file, image folder) of the `split` ('train' or 'val') of the COCO 2017 root `data_dir`."""
    if split not in SPLITS:
        raise ValueError(f"COCO 2017 has captions for the splits {SPLITS}, not {split!r}")
    if not data_dir:
        raise FileNotFoundError(f"--task_name coco2017 needs --data_dir, the COCO 2017 root: {DOWNLOAD_HINT}")
    root = Path(data_dir).expanduser()
    annotation = annotation_path(root, split)
    if not annotation.is_file():
        raise FileNotFoundError(f"--data_dir {root}: no {annotation.relative_to(root)}. A COCO 2017 root holds "
                                "annotations/captions_{train,val}2017.json, train2017/ and val2017/: " + DOWNLOAD_HINT)
    return annotation, root / f"{split}2017"


def coco2017(split: str, transform: Callable, data_dir: Optional[str]) -> Coco2017Dataset:
    """The `split` ('train' or 'val') of COCO 2017 under the root `data_dir`."""
    return Coco2017Dataset(*coco2017_files(split, data_dir), transform)
