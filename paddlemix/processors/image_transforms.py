"""CLIP image preprocessing with PIL + numpy, equal to open_clip's torchvision pipelines.

Eval (open_clip's `image_transform(..., is_train=False)`), by `resize_mode`: 'shortest' resizes the
shortest side and center-crops, 'squash' resizes both sides to the target, 'longest' resizes the
longest side and center-pads; then RGB, normalise.
Train: random resized crop (torchvision's `RandomResizedCrop` algorithm), RGB, normalise.
`image_transform_for(config, is_train)` is the transform of a model config (`vision_cfg.image_size`
and `preprocess_cfg`), which every consumer uses.
"""

import math
import random
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from ..models.configuration import INTERPOLATIONS, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, RESIZE_MODES

ImageInput = Union[Image.Image, np.ndarray]

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# torchvision RandomResizedCrop's defaults, which open_clip keeps.
CROP_ASPECT_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10


def to_pil_image(image: ImageInput) -> Image.Image:
    """A PIL image as is, or a uint8 numpy array of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] as PIL."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 in [0, 255], got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
        return Image.fromarray(image)
    raise ValueError(f"numpy images must be HW, HWC with C in (1, 3, 4); got shape {image.shape}")


def sample_crop_box(
    width: int, height: int, scale: Tuple[float, float], rng: random.Random
) -> Tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params`: a (top, left, height, width) box in pixels.

    Tries 10 times for a box of `scale` of the image area with aspect ratio in [3/4, 4/3] (log-uniform)
    that fits in the image; otherwise falls back to the largest central box within that ratio range.
    `rng` is a `random.Random` or the `random` module itself.
    """
    area = width * height
    log_low, log_high = math.log(CROP_ASPECT_RATIO[0]), math.log(CROP_ASPECT_RATIO[1])
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_low, log_high))
        crop_w = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return rng.randint(0, height - crop_h), rng.randint(0, width - crop_w), crop_h, crop_w
    image_ratio = width / height
    if image_ratio < CROP_ASPECT_RATIO[0]:
        crop_w, crop_h = width, int(round(width / CROP_ASPECT_RATIO[0]))
    elif image_ratio > CROP_ASPECT_RATIO[1]:
        crop_w, crop_h = int(round(height * CROP_ASPECT_RATIO[1])), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class ImageTransform:
    """Callable: PIL image or uint8 numpy image -> normalised float32 array [3, H, W].

    Args:
        image_size: output side, or (height, width).
        is_train: random resized crop if True, else the eval resize of `resize_mode`.
        mean, std: per-channel RGB statistics of the 0..1 pixel values.
        scale: area fraction range of the training crop.
        interpolation: "bicubic" or "bilinear", for the eval resizes that open_clip gives it to: not
            the training crop and not the 'shortest' resize to a non-square size, which open_clip
            always does bicubic.
        resize_mode: eval resize, "shortest", "squash" or "longest" (see the module docstring).
        fill_color: grey level of the padding of resize_mode "longest".
        rng: source of the training crop's randomness (`random.Random(seed)` for reproducible crops).
            None draws from Python's global `random`, which paddle.io.DataLoader reseeds in every
            worker; a passed generator is copied as-is into each forked worker, so with several
            workers they would all crop alike.
    """

    def __init__(
        self,
        image_size: Union[int, Tuple[int, int]],
        is_train: bool,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        scale: Tuple[float, float] = (0.9, 1.0),
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        fill_color: int = 0,
        rng: Optional[random.Random] = None,
    ):
        if interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.is_train = is_train
        self.scale = scale
        self.resample = _RESAMPLING[interpolation]
        self.resize_mode = resize_mode
        self.fill_color = fill_color
        self.rng = rng
        # A 256-entry table per channel gives torchvision's float32 (x / 255 - mean) / std per pixel.
        levels = np.arange(256, dtype=np.float32) / np.float32(255)
        mean = np.asarray(mean, dtype=np.float32)[:, None]
        std = np.asarray(std, dtype=np.float32)[:, None]
        self.lookup = (levels[None, :] - mean) / std

    def __call__(self, image: ImageInput) -> np.ndarray:
        image = to_pil_image(image)
        if self.is_train:
            image = self._random_resized_crop(image)
        elif self.resize_mode == "squash":
            image = image.resize((self.size[1], self.size[0]), self.resample)
        elif self.resize_mode == "longest":
            image = self._resize_longest_center_pad(image)
        else:
            image = self._resize_center_crop(image)
        # Converting after the resize, as open_clip does, matters: PIL resizes RGBA premultiplied.
        pixels = np.asarray(image.convert("RGB"))
        return np.stack([self.lookup[c][pixels[:, :, c]] for c in range(3)])

    def _resize_center_crop(self, image: Image.Image) -> Image.Image:
        target_h, target_w = self.size
        width, height = image.size
        if target_h == target_w:
            # torchvision Resize(int): shortest side to the target, the other side truncated.
            short, long = min(width, height), max(width, height)
            new_long = int(target_h * long / short)
            new_w, new_h = (target_h, new_long) if width <= height else (new_long, target_h)
            image = image.resize((new_w, new_h), self.resample)
        else:
            # open_clip's ResizeKeepRatio for non-square targets: both sides rounded, always bicubic.
            ratio = min(height / target_h, width / target_w)
            new_h, new_w = round(height / ratio), round(width / ratio)
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - target_h) / 2.0))
        left = int(round((new_w - target_w) / 2.0))
        return image.crop((left, top, left + target_w, top + target_h))

    def _resize_longest_center_pad(self, image: Image.Image) -> Image.Image:
        """open_clip's ResizeKeepRatio(longest=1) then CenterCropOrPad: the longest side (relative to
        the target) to the target, the other padded on both sides with `fill_color`, extra on the right/bottom."""
        target_h, target_w = self.size
        ratio = max(image.height / target_h, image.width / target_w)
        image = image.resize((round(image.width / ratio), round(image.height / ratio)), self.resample)
        if image.width < target_w or image.height < target_h:
            pad_w, pad_h = max(target_w - image.width, 0), max(target_h - image.height, 0)
            border = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)  # left, top, right, bottom
            fill = self.fill_color if len(image.getbands()) == 1 else (self.fill_color,) * len(image.getbands())
            palette = image.getpalette() if image.mode == "P" else None
            image = ImageOps.expand(image, border=border, fill=fill)
            if palette is not None:
                image.putpalette(palette)
        # Rounding can leave one side a pixel over the target: cropped centrally, as open_clip does.
        top = int(round((image.height - target_h) / 2.0))
        left = int(round((image.width - target_w) / 2.0))
        return image.crop((left, top, left + target_w, top + target_h))

    def _random_resized_crop(self, image: Image.Image) -> Image.Image:
        rng = self.rng if self.rng is not None else random
        top, left, crop_h, crop_w = sample_crop_box(image.width, image.height, self.scale, rng)
        image = image.crop((left, top, left + crop_w, top + crop_h))
        # open_clip's RandomResizedCrop is bicubic whatever the model's interpolation.
        return image.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)


# open_clip's name for it: image_transform(image_size, is_train, ...).
image_transform = ImageTransform


def preprocess_options(config) -> dict:
    """ImageTransform's keyword arguments from model config `config`'s `preprocess_cfg`."""
    pre = config.preprocess_cfg
    return {"mean": pre.mean, "std": pre.std, "interpolation": pre.interpolation, "resize_mode": pre.resize_mode,
            "fill_color": pre.fill_color}


def image_transform_for(config, is_train: bool, rng: Optional[random.Random] = None) -> ImageTransform:
    """The transform of model config `config` (a CLIPConfig): its `vision_cfg.image_size` and its
    `preprocess_cfg` (mean/std, interpolation, resize_mode, fill_color)."""
    return ImageTransform(config.vision_cfg.image_size, is_train, rng=rng, **preprocess_options(config))
