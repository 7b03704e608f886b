"""Zero-shot classification: classifier weights, top-k accuracy and its tie rule, the ImageNet metadata."""

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.evaluation import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    build_zero_shot_classifier,
    load_metadata_file,
    topk_accuracy,
    zero_shot_classification,
)
from paddlemix.models import CLIPConfig, TextConfig, VisionConfig
from paddlemix.processors import get_tokenizer

CLASSNAMES = ["tench", "goldfish", "great white shark", "tabby cat", "toilet paper", "crane", "missile"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{}"]


@pytest.fixture(scope="module")
def tiny_model():
    paddle.seed(0)
    vision = VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=2)
    text = TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    model = AutoModel.from_config(CLIPConfig(embed_dim=16, vision_cfg=vision, text_cfg=text))
    model.eval()
    return model


def numpy_classifier(model, classnames, templates):
    """One class at a time: L2-normalise each template's embedding, mean, renormalise (open_clip legacy)."""
    columns = []
    for name in classnames:
        input_ids = paddle.to_tensor(get_tokenizer(model)([template.format(name) for template in templates]))
        with paddle.no_grad():
            embeddings = model.encode_text(input_ids).numpy().astype(np.float64)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        mean = embeddings.mean(axis=0)
        columns.append(mean / np.linalg.norm(mean))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("batch_classes", [1, 3, 64])
def test_classifier_is_normalised_template_mean_for_any_class_batch(tiny_model, batch_classes):
    classifier = build_zero_shot_classifier(tiny_model, get_tokenizer(tiny_model), CLASSNAMES, TEMPLATES, batch_classes=batch_classes)
    assert classifier.shape == [16, len(CLASSNAMES)]
    assert classifier.stop_gradient
    np.testing.assert_allclose(classifier.numpy(), numpy_classifier(tiny_model, CLASSNAMES, TEMPLATES), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(classifier.numpy(), axis=0), 1.0, rtol=1e-6)


def test_classifier_restores_each_sublayers_train_or_eval_flag(tiny_model):
    try:
        tiny_model.train()
        tiny_model.text.eval()
        build_zero_shot_classifier(tiny_model, get_tokenizer(tiny_model), CLASSNAMES[:2], TEMPLATES)
        assert tiny_model.training and tiny_model.visual.training
        assert not any(layer.training for layer in tiny_model.text.sublayers(include_self=True))
    finally:
        tiny_model.eval()
    build_zero_shot_classifier(tiny_model, get_tokenizer(tiny_model), CLASSNAMES[:2], TEMPLATES)
    assert not any(layer.training for layer in tiny_model.sublayers(include_self=True))


def test_template_without_placeholder_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="'a photo.' must hold exactly one"):
        build_zero_shot_classifier(tiny_model, get_tokenizer(tiny_model), CLASSNAMES, ["a photo of a {}.", "a photo."])


def test_topk_accuracy_on_hand_ranked_logits():
    row = [0.1, 0.9, 0.0, 0.3, 0.2, 0.5]  # classes by score: 1, 5, 3, 4, 0, 2
    targets = [1, 4, 2, 0]  # ranks 1, 4, 6, 5
    assert topk_accuracy(np.array([row] * 4), np.array(targets)) == {"top1": 25.0, "top5": 75.0}
    assert topk_accuracy(paddle.to_tensor([row] * 4), paddle.to_tensor(targets), ks=(4,)) == {"top4": 50.0}


def test_topk_with_fewer_classes_than_k_is_reported_as_top_num_classes():
    result = topk_accuracy(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), np.array([0, 0]))
    assert result == {"top1": 50.0, "top3": 100.0}


def test_topk_ties_rank_the_lower_class_index_first():
    logits = np.array([[1.0, 1.0, 1.0]] * 3 + [[0.0, 2.0, 2.0]] * 2)
    targets = np.array([0, 1, 2, 1, 2])  # ranks 1, 2, 3, 1, 2
    assert topk_accuracy(logits, targets, ks=(1, 2, 3)) == {"top1": 40.0, "top2": 80.0, "top3": 100.0}


def test_top1_agrees_with_argmax_on_logits_full_of_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, (200, 10)).astype("float32")
    targets = rng.integers(0, 10, 200)
    expected = 100.0 * np.mean(logits.argmax(axis=1) == targets)
    assert topk_accuracy(logits, targets, ks=(1,))["top1"] == pytest.approx(expected)


def test_non_finite_logits_and_bad_k_are_rejected():
    with pytest.raises(ValueError, match="NaN or inf"):
        topk_accuracy(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="k >= 1"):
        topk_accuracy(np.array([[1.0, 0.0]]), np.array([0]), ks=(0,))
    with pytest.raises(ValueError, match="outside"):
        topk_accuracy(np.array([[1.0, 0.0]]), np.array([2]))


class MeanColourModel(paddle.nn.Layer):
    """encode_image is the image's mean colour, so a test chooses each image's embedding; records its mode."""

    def __init__(self):
        super().__init__()
        self.calls = []  # (training, gradients enabled) per call

    def encode_image(self, images, normalize=False):
        self.calls.append((self.training, paddle.is_grad_enabled()))
        features = images.mean(axis=[2, 3])
        return paddle.nn.functional.normalize(features, axis=-1) if normalize else features


def colour_batch(colour, targets):
    images = np.broadcast_to(np.array(colour, "float32")[None, :, None, None], (len(targets), 3, 4, 4))
    return paddle.to_tensor(images.copy()), paddle.to_tensor(np.array(targets, "int64"))


def test_zero_shot_classification_accumulates_over_batches_in_eval_mode():
    classifier = paddle.to_tensor(np.concatenate([np.eye(3), -np.eye(3)], axis=1).astype("float32"))
    # colour (3, 2, 1) ranks classes 0, 1, 2, 5, 4, 3; colour (1, 2, 3) ranks 2, 1, 0, 3, 4, 5
    batches = [colour_batch((3, 2, 1), [0, 1, 4, 3]), colour_batch((1, 2, 3), [2, 5, 3])]
    model = MeanColourModel()
    model.train()
    result = zero_shot_classification(model, batches, classifier)
    assert result == pytest.approx({"top1": 100 * 2 / 7, "top5": 100 * 5 / 7, "num_samples": 7})
    assert model.calls == [(False, False), (False, False)]
    assert model.training


def test_zero_shot_classification_equals_topk_accuracy_of_all_logits(tiny_model):
    classifier = build_zero_shot_classifier(tiny_model, get_tokenizer(tiny_model), CLASSNAMES, TEMPLATES)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((5, 3, 32, 32)).astype("float32")
    targets = rng.integers(0, len(CLASSNAMES), 5)
    batches = [(paddle.to_tensor(images[:3]), paddle.to_tensor(targets[:3])),
               (paddle.to_tensor(images[3:]), paddle.to_tensor(targets[3:]))]
    with paddle.no_grad():
        logits = tiny_model.encode_image(paddle.to_tensor(images), normalize=True) @ classifier
    expected = topk_accuracy(logits, targets)
    assert zero_shot_classification(tiny_model, batches, classifier) == pytest.approx({**expected, "num_samples": 5})


def test_imagenet_metadata_matches_open_clip():
    # open_clip 3.3.0 zero_shot_metadata.py: IMAGENET_CLASSNAMES and OPENAI_IMAGENET_TEMPLATES
    assert len(IMAGENET_CLASSNAMES) == 1000 and len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert all(template.count("{}") == 1 for template in OPENAI_IMAGENET_TEMPLATES)
    assert IMAGENET_CLASSNAMES[:3] == ("tench", "goldfish", "great white shark")
    assert IMAGENET_CLASSNAMES[-3:] == ("bolete", "corn cob", "toilet paper")
    assert (IMAGENET_CLASSNAMES[134], IMAGENET_CLASSNAMES[517]) == ("crane bird", "construction crane")
    assert IMAGENET_CLASSNAMES[281] == "tabby cat" and IMAGENET_CLASSNAMES[836:838] == ("sunglasses", "sunglasses")
    assert OPENAI_IMAGENET_TEMPLATES[:2] == ("a bad photo of a {}.", "a photo of many {}.")
    assert OPENAI_IMAGENET_TEMPLATES[-2:] == ("a photo of a small {}.", "a tattoo of the {}.")


def test_metadata_file_drops_comments_and_rejects_blank_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# source note\ncat\ndog\n")
    assert load_metadata_file(path) == ("cat", "dog")
    path.write_text("# source note\ncat\n\ndog\n")
    with pytest.raises(ValueError, match="classes.txt:3: blank line"):
        load_metadata_file(path)
