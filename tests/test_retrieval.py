"""Image-text retrieval recall: the COCO protocol (any of an image's captions), ranks, ties, blocking."""

import tracemalloc

import numpy as np
import paddle
import pytest

from paddlemix.evaluation import retrieval_metrics


def scored(similarity):
    """Features whose image x text similarity is exactly `similarity` [N_img, N_txt]: one-hot images."""
    similarity = np.asarray(similarity, "float32")
    return np.eye(similarity.shape[0], dtype="float32"), similarity.T.copy()


def brute_force_metrics(image_features, text_features, text_to_image, ks=(1, 5, 10)):
    """Whole similarity matrix, stable descending sort, 0-based positions as open_clip's get_clip_metrics."""
    similarity = image_features @ text_features.T
    image_positions = [np.flatnonzero(text_to_image[np.argsort(-row, kind="stable")] == i).min()
                       for i, row in enumerate(similarity)]
    text_positions = [np.flatnonzero(np.argsort(-column, kind="stable") == text_to_image[t])[0]
                      for t, column in enumerate(similarity.T)]
    metrics = {}
    for name, positions in (("image_to_text", image_positions), ("text_to_image", text_positions)):
        positions = np.array(positions)
        metrics[f"{name}_mean_rank"] = positions.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(positions)) + 1
        for k in ks:
            metrics[f"{name}_R@{k}"] = np.mean(positions < k)
    return metrics


# Image 0 has five captions (texts 0, 1, 3, 5, 6), image 1 has text 2, image 2 has text 4.
HAND_TEXT_TO_IMAGE = np.array([0, 0, 1, 0, 2, 0, 0])
HAND_SIMILARITY = [
    [0.1, 0.2, 0.9, 0.3, 0.8, 0.4, 0.5],  # best own caption, text 6, ranks 3rd behind texts 2 and 4
    [0.0, 0.0, 0.7, 0.0, 0.9, 0.8, 0.0],  # own caption ranks 3rd behind texts 4 and 5
    [0.0, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0],  # own caption ranks 1st
]
# rank of each text's own image (columns): 1, 1, 2 (image 0 is ahead), 1, 3, 2 (image 1 is ahead), 1
HAND_EXPECTED = {
    "image_to_text_R@1": 1 / 3, "image_to_text_R@2": 1 / 3, "image_to_text_R@5": 1.0,
    "image_to_text_mean_rank": 7 / 3, "image_to_text_median_rank": 3.0,
    "text_to_image_R@1": 4 / 7, "text_to_image_R@2": 6 / 7, "text_to_image_R@5": 1.0,
    "text_to_image_mean_rank": 11 / 7, "text_to_image_median_rank": 1.0,
}


@pytest.mark.parametrize("block_size", [1, 3, 100])
def test_hand_made_ranks_for_any_block_size(block_size):
    images, texts = scored(HAND_SIMILARITY)
    result = retrieval_metrics(images, texts, HAND_TEXT_TO_IMAGE, ks=(1, 2, 5), block_size=block_size)
    assert result == pytest.approx(HAND_EXPECTED)


def test_image_whose_best_caption_ranks_seventh_misses_r5_and_hits_r10():
    text_to_image = np.array([0] * 5 + [1] * 6)
    similarity = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1], [0.0] * 5 + [1.0] * 6]
    result = retrieval_metrics(*scored(similarity), text_to_image)
    assert result["image_to_text_R@5"] == 0.5 and result["image_to_text_R@10"] == 1.0
    assert result["image_to_text_mean_rank"] == 4.0  # ranks 7 and 1
    assert result["image_to_text_median_rank"] == 4.0
    # texts 9 (a tie, 1.0 vs 1.0) and 10 (1.1 vs 1.0) rank their own image 1 second, behind image 0
    assert result["text_to_image_R@1"] == pytest.approx(9 / 11) and result["text_to_image_R@5"] == 1.0


def test_ties_rank_the_lower_index_first():
    text_to_image = np.array([2, 0, 1, 0, 2])
    features = np.ones((3, 4), "float32"), np.ones((5, 4), "float32")
    result = retrieval_metrics(*features, text_to_image, ks=(1, 2))
    # image i: rank 1 + index of its first caption -> 2, 3, 1; text t: rank 1 + its image -> 3, 1, 2, 1, 3
    assert result == pytest.approx({
        "image_to_text_R@1": 1 / 3, "image_to_text_R@2": 2 / 3,
        "image_to_text_mean_rank": 2.0, "image_to_text_median_rank": 2.0,
        "text_to_image_R@1": 2 / 5, "text_to_image_R@2": 3 / 5,
        "text_to_image_mean_rank": 2.0, "text_to_image_median_rank": 2.0,
    })


@pytest.mark.parametrize("block_size", [1, 7, 4096])
def test_random_features_with_five_captions_each_match_brute_force(block_size):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((37, 16)).astype("float32")
    text_to_image = rng.permutation(np.repeat(np.arange(37), 5))
    texts = images[text_to_image] + 1.5 * rng.standard_normal((185, 16)).astype("float32")
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    expected = brute_force_metrics(images, texts, text_to_image)
    assert 0 < expected["text_to_image_R@1"] < expected["text_to_image_R@10"] < 1, "neither easy nor hopeless"
    result = retrieval_metrics(paddle.to_tensor(images), paddle.to_tensor(texts), paddle.to_tensor(text_to_image),
                               block_size=block_size)
    assert result == pytest.approx(expected)


def test_similarity_is_computed_in_blocks_of_bounded_memory():
    rng = np.random.default_rng(0)
    images, texts = rng.standard_normal((2, 2000, 8)).astype("float32")
    tracemalloc.start()
    try:
        retrieval_metrics(images, texts, np.arange(2000), block_size=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole_similarity = 2000 * 2000 * 4
    assert peak < whole_similarity / 2


def test_inconsistent_inputs_are_rejected():
    images, texts = scored(HAND_SIMILARITY)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(images, texts, np.array([0, 0, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(images, texts, np.array([0, 0, 1, 0, 2, 0, 3]))
    with pytest.raises(ValueError, match="text_to_image entries"):
        retrieval_metrics(images, texts, HAND_TEXT_TO_IMAGE[:6])
    with pytest.raises(ValueError, match="N_img, D"):
        retrieval_metrics(images, texts[:, :2], HAND_TEXT_TO_IMAGE)
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(images * np.nan, texts, HAND_TEXT_TO_IMAGE)
