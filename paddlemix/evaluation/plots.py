"""A similarity matrix as a PNG heat map (PIL only): rows are captions, columns images."""

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

CELL = 96  # heat-map cell side in pixels


def heat_colour(value: float) -> tuple:
    """Blue (low) to red (high) for value in [0, 1]."""
    return (int(255 * value), int(80 + 60 * (1 - abs(2 * value - 1))), int(255 * (1 - value)))


def save_similarity_heat_map(similarity: np.ndarray, images: Sequence[Image.Image], captions: Sequence[str],
                             path: Path) -> Path:
    """similarity [captions, images]; image thumbnails on top, captions on the left, values in the cells."""
    label_width = 7 * max(len(c) for c in captions) + 16
    rows, cols = similarity.shape
    canvas = Image.new("RGB", (label_width + cols * CELL, CELL + rows * CELL), "white")
    draw = ImageDraw.Draw(canvas)
    low, high = float(similarity.min()), float(similarity.max())
    for col, image in enumerate(images):
        canvas.paste(image.convert("RGB").resize((CELL - 8, CELL - 8)), (label_width + col * CELL + 4, 4))
    for row, caption in enumerate(captions):
        top = CELL + row * CELL
        draw.text((8, top + CELL // 2 - 6), caption, fill="black")
        for col in range(cols):
            value = similarity[row, col]
            left = label_width + col * CELL
            draw.rectangle((left, top, left + CELL - 1, top + CELL - 1),
                           fill=heat_colour((value - low) / (high - low + 1e-12)))
            draw.text((left + CELL // 2 - 18, top + CELL // 2 - 6), f"{value:+.3f}", fill="white")
    canvas.save(path)
    return path
