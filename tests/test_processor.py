"""AutoProcessor / CLIPProcessor: model-sized inputs from images and captions."""

import numpy as np
import paddle
from PIL import Image

from paddlemix import AutoProcessor
from paddlemix.processors import image_transform, tokenize


def test_auto_processor_sizes_inputs_for_the_model():
    processor = AutoProcessor.from_pretrained("paddlemix/CLIP/ViT-L-14-336")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    inputs = processor(images=[image, image], text=["a dog", "a cat"])
    assert isinstance(inputs["image"], paddle.Tensor) and inputs["image"].shape == [2, 3, 336, 336]
    assert inputs["input_ids"].dtype == paddle.int64 and inputs["input_ids"].shape == [2, 77]
    np.testing.assert_array_equal(inputs["image"].numpy()[0], image_transform(336, is_train=False)(image))
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), tokenize(["a dog", "a cat"]))


def test_processor_returns_numpy_on_request():
    processor = AutoProcessor.from_pretrained("paddlemix/CLIP/ViT-B-32")
    inputs = processor(text="a photo", return_tensors="np")
    assert isinstance(inputs["input_ids"], np.ndarray) and inputs["input_ids"].shape == (1, 77)
    assert "image" not in inputs
