"""CLIP image preprocessing against open_clip's outputs (fixtures made by tests/fixtures/make_processor_fixtures.py)."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.processors import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform
from paddlemix.processors.image_transforms import CROP_ASPECT_RATIO, sample_crop_box

FIXTURES = np.load(Path(__file__).parent / "fixtures" / "transform_cases.npz")
IMAGE_NAMES = ["rgb", "gray", "rgba"]
EVAL_SIZES = {"224": 224, "64": 64, "64x96": (64, 96)}
# open_clip image_transform keyword arguments of the other eval cases (resize modes, interpolations, fill)
PREPROCESS_CASES = json.loads(str(FIXTURES["preprocess_cases"]))


class ScriptedDraws:
    """A stand-in for `random.Random`: `uniform` returns the given values in turn, `randint` its upper end."""

    def __init__(self, uniform_values):
        self.uniform_values = iter(uniform_values)

    def uniform(self, low, high):
        return next(self.uniform_values)

    def randint(self, low, high):
        return high


@pytest.mark.parametrize("size_name", EVAL_SIZES)
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_eval_transform_matches_open_clip_preprocess_val(name, size_name):
    transform = image_transform(EVAL_SIZES[size_name], is_train=False)
    out = transform(Image.fromarray(FIXTURES[name]))
    expected = FIXTURES[f"{name}_eval_{size_name}"]
    assert out.dtype == np.float32
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", sorted(PREPROCESS_CASES))
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_resize_mode_matches_open_clip_image_transform(name, case):
    kwargs = dict(PREPROCESS_CASES[case])
    size = kwargs.pop("image_size")
    out = image_transform(size, is_train=False, **kwargs)(Image.fromarray(FIXTURES[name]))
    expected = FIXTURES[f"{name}_eval_{case}"]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_the_resize_mode_cases_cover_all_three_modes_and_padding():
    assert {case["resize_mode"] for case in PREPROCESS_CASES.values()} == {"shortest", "squash", "longest"}
    # 'longest' pads the short side of the 300x200 image: open_clip's first row is all fill colour.
    grey = (np.float32(128 / 255) - np.asarray(OPENAI_DATASET_MEAN, np.float32)) / np.asarray(OPENAI_DATASET_STD, np.float32)
    first_row = FIXTURES["rgb_eval_longest_64_bilinear_fill128"][:, 0, :]
    np.testing.assert_allclose(first_row, np.repeat(grey[:, None], 64, axis=1), rtol=0, atol=1e-5)


def test_unknown_resize_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="squash"):
        image_transform(64, is_train=False, resize_mode="crop")


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_numpy_input_gives_the_same_as_the_pil_image(name):
    transform = image_transform(64, is_train=False)
    pixels = FIXTURES[name]
    np.testing.assert_array_equal(transform(pixels), transform(Image.fromarray(pixels)))


def test_single_channel_numpy_image_is_treated_as_grayscale():
    transform = image_transform(64, is_train=False)
    gray = FIXTURES["gray"]
    np.testing.assert_array_equal(transform(gray[:, :, None]), transform(gray))


@pytest.mark.parametrize(
    "bad_input, error",
    [(np.zeros((8, 8, 3), np.float32), TypeError), (np.zeros((8, 8, 2), np.uint8), ValueError), ([[0]], TypeError)],
)
def test_unsupported_inputs_are_rejected_with_a_clear_error(bad_input, error):
    with pytest.raises(error, match="numpy"):
        image_transform(64, is_train=False)(bad_input)


def test_custom_mean_and_std_normalise_each_channel():
    transform = image_transform(8, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    out = transform(np.full((8, 8, 3), 255, np.uint8))
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 0.5], rtol=1e-6)


def test_default_normalisation_uses_the_openai_dataset_statistics():
    out = image_transform(4, is_train=False)(np.zeros((4, 4, 3), np.uint8))
    expected = -np.asarray(OPENAI_DATASET_MEAN, np.float32) / np.asarray(OPENAI_DATASET_STD, np.float32)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)


def test_train_transform_matches_open_clip_for_the_same_crop_box():
    box = tuple(FIXTURES["rgba_train_box"].tolist())
    rgba = FIXTURES["rgba"]
    # Area fraction 0.9 at aspect ratio 4/3 fits at the first try; the largest offsets then give the box.
    draws = [0.9, math.log(CROP_ASPECT_RATIO[1])]
    assert sample_crop_box(rgba.shape[1], rgba.shape[0], (0.9, 1.0), ScriptedDraws(draws)) == box
    out = image_transform(64, is_train=True, rng=ScriptedDraws(draws))(rgba)
    np.testing.assert_allclose(out, FIXTURES["rgba_train_64"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("image_size, shape", [(32, (3, 32, 32)), ((24, 40), (3, 24, 40))])
def test_train_transform_gives_float32_chw_of_the_requested_size(image_size, shape):
    out = image_transform(image_size, is_train=True, rng=random.Random(0))(FIXTURES["rgb"])
    assert out.dtype == np.float32
    assert out.shape == shape


def test_train_transform_is_reproducible_with_the_same_seed_and_varies_across_seeds():
    image = FIXTURES["rgba"]
    outputs = [image_transform(32, is_train=True, rng=random.Random(seed))(image) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("width, height", [(233, 177), (200, 200), (177, 233), (640, 480), (31, 29)])
def test_crop_boxes_lie_in_the_image_and_cover_90_to_100_percent_of_it(width, height):
    """Aspect ratios within [3/4, 4/3], so the fallback box (if hit) is the whole image."""
    rng = random.Random(0)
    for _ in range(500):
        top, left, crop_h, crop_w = sample_crop_box(width, height, (0.9, 1.0), rng)
        assert 0 <= top <= height - crop_h and 0 <= left <= width - crop_w
        # Each side is rounded to whole pixels, so the sampled area is met up to half a pixel per side.
        assert (crop_w + 0.5) * (crop_h + 0.5) >= 0.9 * width * height
        assert crop_w * crop_h <= width * height


@pytest.mark.parametrize("width, height, box", [(300, 100, (0, 83, 100, 133)), (100, 300, (83, 0, 133, 100))])
def test_too_elongated_images_fall_back_to_the_central_box_of_extreme_aspect_ratio(width, height, box):
    assert sample_crop_box(width, height, (0.9, 1.0), random.Random(0)) == box


def test_train_transform_with_full_scale_on_a_square_image_is_a_plain_resize():
    """A full-area box fits a square image only as the whole image, whatever the drawn aspect ratio."""
    square = FIXTURES["rgb"][:, :200]
    train = image_transform(224, is_train=True, scale=(1.0, 1.0), rng=random.Random(0))
    np.testing.assert_array_equal(train(square), image_transform(224, is_train=False)(square))
