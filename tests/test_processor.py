"""AutoProcessor / CLIPProcessor: model-sized inputs from images and captions."""

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix import AutoConfig, AutoProcessor
from paddlemix.models.configuration import PreprocessConfig
from paddlemix.processors import CLIPProcessor, SimpleTokenizer, image_transform
from paddlemix.processors.image_transforms import image_transform_for


def test_auto_processor_sizes_inputs_for_the_model():
    processor = AutoProcessor.from_pretrained("paddlemix/CLIP/ViT-L-14-336")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    inputs = processor(images=[image, image], text=["a dog", "a cat"])
    assert isinstance(inputs["image"], paddle.Tensor) and inputs["image"].shape == [2, 3, 336, 336]
    assert inputs["input_ids"].dtype == paddle.int64 and inputs["input_ids"].shape == [2, 77]
    np.testing.assert_array_equal(inputs["image"].numpy()[0], image_transform(336, is_train=False)(image))
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), SimpleTokenizer()(["a dog", "a cat"]))


@pytest.mark.parametrize("resize_mode", ["squash", "longest"])
def test_processor_from_config_follows_the_configs_preprocess_cfg(resize_mode):
    config = AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-32")
    config.preprocess_cfg = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear",
                                             resize_mode=resize_mode)
    image = np.random.default_rng(1).integers(0, 256, (120, 300, 3), dtype=np.uint8)
    expected = image_transform(224, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                               interpolation="bilinear", resize_mode=resize_mode)(image)
    np.testing.assert_array_equal(CLIPProcessor.from_config(config)(images=[image], return_tensors="np")["image"][0],
                                  expected)
    np.testing.assert_array_equal(image_transform_for(config, is_train=False)(image), expected)
    train = image_transform_for(config, is_train=True)
    assert train.is_train and train.size == (224, 224)


def test_processor_returns_numpy_on_request():
    processor = AutoProcessor.from_pretrained("paddlemix/CLIP/ViT-B-32")
    inputs = processor(text="a photo", return_tensors="np")
    assert isinstance(inputs["input_ids"], np.ndarray) and inputs["input_ids"].shape == (1, 77)
    assert "image" not in inputs
