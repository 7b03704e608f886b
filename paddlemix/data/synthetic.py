"""An embedded image-caption set: coloured shapes at positions, with captions that say which.

Written in the coco_karpathy format (annotations/coco_karpathy_{train,val,test}.json + images/),
so the default job and the tests go through the real reader. 4 colours x 3 shapes x 4 positions
give 48 classes that a tiny CLIP separates after a few minutes of CPU training.
"""

import json
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}
TEMPLATES = (
    "a {colour} {shape} in the {position}",
    "a {position} {colour} {shape}",
    "the {shape} in the {position} is {colour}",
    "{colour} {shape}, {position}",
    "a picture of a {colour} {shape} at the {position}",
)


def classes() -> List[Tuple[str, str, str]]:
    """Every (colour, shape, position), in a fixed order."""
    return [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def draw(colour: str, shape: str, position: str, rng: np.random.Generator, size: int) -> Image.Image:
    """A noisy light background with one shape, its size and place jittered."""
    background = rng.normal(225, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    centre_x, centre_y = (np.array(POSITIONS[position]) + rng.uniform(-0.06, 0.06, 2)) * size
    radius = size * rng.uniform(0.13, 0.18)
    box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(centre_x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLOURS[colour])
    return image


def caption(colour: str, shape: str, position: str, template: str) -> str:
    return template.format(colour=colour, shape=shape, position=position)


def write_shapes_dataset(
    root: Union[str, Path], train_per_class: int = 6, eval_per_class: int = 1, image_size: int = 64, seed: int = 0
) -> Path:
    """Write the set under `root`; train records have one caption, val/test records all five."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", eval_per_class), ("test", eval_per_class)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        records: List[Dict] = []
        for class_index, (colour, shape, position) in enumerate(classes()):
            for copy in range(per_class):
                name = f"{split}/{class_index:02d}_{copy:03d}.jpg"
                draw(colour, shape, position, rng, image_size).save(root / "images" / name, quality=92)
                record = {"image": name, "image_id": f"shapes_{split}_{class_index:02d}_{copy:03d}"}
                if split == "train":
                    record["caption"] = caption(colour, shape, position, TEMPLATES[rng.integers(len(TEMPLATES))])
                else:
                    record["caption"] = [caption(colour, shape, position, t) for t in TEMPLATES]
                records.append(record)
        path = root / "annotations" / f"coco_karpathy_{split}.json"
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return root
