"""Evaluation data: an ImageFolder for zero-shot classification and a caption set for retrieval.

Classification directory (PaddleMIX's layout): `DIR/images/<class folder>/*`, `DIR/labels.txt`
(class names, one per line, in folder order) and `DIR/templates.txt` (one prompt per line with
`{}`). Without labels.txt/templates.txt, a folder of the 1000 ImageNet synsets uses OpenAI's
ImageNet class names and 80 templates; other folders use their folder names and "a photo of a {}.".
"""

from pathlib import Path
from typing import List, Tuple

from ..data.coco2017 import CocoCaptionFile, is_coco_captions
from ..data.json_records import read_json
from ..utils.log import logger
from .zero_shot import check_template
from .zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, load_metadata_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class ClassificationSet:
    """samples: (image path, class index); classnames and templates for the zero-shot classifier."""

    def __init__(self, directory: str):
        root = Path(directory)
        images = root / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"--classification_eval {root}: no images/ folder (expected images/<class>/*)")
        folders = sorted(p for p in images.iterdir() if p.is_dir())
        if not folders:
            raise FileNotFoundError(f"--classification_eval {root}: images/ holds no class folders")
        self.samples: List[Tuple[str, int]] = [
            (str(path), index)
            for index, folder in enumerate(folders)
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        empty = [f.name for f in folders if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in f.iterdir())]
        if empty:
            raise ValueError(f"--classification_eval {root}: class folder(s) without images: {', '.join(empty[:10])}")
        imagenet = len(folders) == len(IMAGENET_CLASSNAMES)
        if (root / "labels.txt").is_file():
            self.classnames = load_metadata_file(root / "labels.txt")
        else:
            self.classnames = IMAGENET_CLASSNAMES if imagenet else tuple(f.name.replace("_", " ") for f in folders)
        if len(self.classnames) != len(folders):
            raise ValueError(f"{root / 'labels.txt'}: {len(self.classnames)} names for {len(folders)} class folders")
        if (root / "templates.txt").is_file():
            path = root / "templates.txt"
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip() and not line.startswith("#"):
                    check_template(line, f"{path}:{number}")
            self.templates = load_metadata_file(path)
        else:
            self.templates = OPENAI_IMAGENET_TEMPLATES if imagenet else DEFAULT_TEMPLATES
        self.name = root.name


def caption_set(annotation: Path, image_root: Path) -> Tuple[List[str], List[str], List[int]]:
    """(image paths, captions, image index of each caption) of a coco_karpathy-format file, or of a COCO
    captions file (captions_val2017.json: its captions grouped per image by image_id, images that have
    none and annotations that cannot be used left out)."""
    content, _ = read_json(annotation)
    if is_coco_captions(content):
        return _coco_caption_set(CocoCaptionFile(annotation, content), Path(image_root))
    records = content
    images, captions, owner = [], [], []
    for index, record in enumerate(records):
        images.append(str(Path(image_root) / record["image"]))
        texts = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
        captions.extend(texts)
        owner.extend([index] * len(texts))
    return images, captions, owner


def _coco_caption_set(captions: CocoCaptionFile, image_root: Path) -> Tuple[List[str], List[str], List[int]]:
    if captions.problems:
        logger.warning("%s: %d annotations left out of retrieval, e.g. %s", captions.path, len(captions.problems),
                       next(iter(captions.problems.values())))
    rows, texts, owner = captions.by_image()
    return [str(image_root / captions.file_names[row]) for row in rows], texts, owner
