"""ClipLoss in one process: value, gradients, label caching and refused options."""

import numpy as np
import paddle
import pytest

from paddlemix.models.loss import ClipLoss


def reference_clip_loss(image, text, scale, bias=0.0):
    """Symmetric cross-entropy of matching rows, in numpy. image, text: [N, D]."""

    def cross_entropy_diagonal(logits):
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    logits_per_image = scale * image @ text.T + bias
    return (cross_entropy_diagonal(logits_per_image) + cross_entropy_diagonal(logits_per_image.T)) / 2


def random_features(rng, n, d):
    features = rng.standard_normal((n, d))
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def as_float64(x):
    # paddle.to_tensor turns a Python float into float32, which would blur the comparison.
    return paddle.to_tensor(np.asarray(x, dtype="float64"))


def loss_value(loss_fn, image, text, scale):
    return float(loss_fn(as_float64(image), as_float64(text), as_float64(scale)))


@pytest.mark.parametrize("bias", [None, -2.5])
def test_loss_equals_numpy_symmetric_cross_entropy(bias):
    rng = np.random.default_rng(0)
    image, text = random_features(rng, 5, 8), random_features(rng, 5, 8)
    scale = 14.3

    out = ClipLoss()(
        as_float64(image),
        as_float64(text),
        as_float64(scale),
        logit_bias=None if bias is None else as_float64(bias),
        output_dict=True,
    )

    expected = reference_clip_loss(image, text, scale, 0.0 if bias is None else bias)
    np.testing.assert_allclose(float(out["contrastive_loss"]), expected, rtol=1e-12)


def test_gradients_match_central_finite_differences():
    rng = np.random.default_rng(1)
    image, text = random_features(rng, 3, 4), random_features(rng, 3, 4)
    scale = np.array(7.0)
    loss_fn = ClipLoss()
    inputs = [paddle.to_tensor(x, stop_gradient=False) for x in (image, text, scale)]
    loss_fn(*inputs).backward()

    eps = 1e-6
    for which, tensor in enumerate(inputs):
        numeric = np.zeros(tensor.shape)
        for index in np.ndindex(*tensor.shape):
            plus = [image.copy(), text.copy(), scale.copy()]
            minus = [image.copy(), text.copy(), scale.copy()]
            plus[which][index] += eps
            minus[which][index] -= eps
            numeric[index] = (loss_value(loss_fn, *plus) - loss_value(loss_fn, *minus)) / (2 * eps)
        np.testing.assert_allclose(tensor.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_cached_labels_follow_batch_size_changes():
    rng = np.random.default_rng(2)
    loss_fn = ClipLoss(cache_labels=True)

    for n in (4, 3, 4):
        image, text = random_features(rng, n, 6), random_features(rng, n, 6)
        np.testing.assert_allclose(
            loss_value(loss_fn, image, text, 10.0), reference_clip_loss(image, text, 10.0), rtol=1e-12
        )
        np.testing.assert_array_equal(
            loss_fn.get_ground_truth(paddle.CPUPlace(), n).numpy(), np.arange(n)
        )


def test_local_loss_labels_are_offset_by_the_rows_of_lower_ranks():
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=1, world_size=2)

    np.testing.assert_array_equal(loss_fn.get_ground_truth(paddle.CPUPlace(), 3, offset=5).numpy(), [5, 6, 7])


def test_local_loss_without_gather_with_grad_is_refused_naming_both_flags():
    with pytest.raises(ValueError, match="gather_with_grad") as error:
        ClipLoss(local_loss=True, gather_with_grad=False, rank=0, world_size=2)

    assert "--local_loss false" in str(error.value)
    assert "--gather_with_grad true" in str(error.value)
