"""Image-text retrieval recall (the COCO / Flickr30k protocol), with key names as open_clip's `get_clip_metrics`.

image->text: an image is retrieved at k when ANY of its captions ranks within the top k of all texts.
text->image: a caption is retrieved at k when its own image ranks within the top k of all images.
Ranks are of the best-ranked correct item, 1-based; ties are broken by index (see `ranking`). The
similarity is the plain dot product of the features as given: pass L2-normalised features for cosine.
"""

from typing import Dict, Iterator, Sequence, Tuple

import numpy as np

from .ranking import as_float_array, as_index_array, rank_of


def _row_blocks(queries: np.ndarray, keys: np.ndarray, block_size: int) -> Iterator[Tuple[slice, np.ndarray]]:
    """(rows, similarity [len(rows), len(keys)]) for consecutive blocks of at most block_size queries."""
    for start in range(0, queries.shape[0], block_size):
        rows = slice(start, start + block_size)
        yield rows, queries[rows] @ keys.T


def _image_to_text_ranks(image_features, text_features, text_to_image, block_size) -> np.ndarray:
    ranks = []
    for rows, scores in _row_blocks(image_features, text_features, block_size):
        image_ids = np.arange(image_features.shape[0])[rows]
        correct = text_to_image[None, :] == image_ids[:, None]
        # argmax takes the first maximum: the correct caption that a stable descending sort puts first
        best_caption = np.where(correct, scores, -np.inf).argmax(axis=1)
        ranks.append(rank_of(scores, best_caption))
    return np.concatenate(ranks)


def _text_to_image_ranks(image_features, text_features, text_to_image, block_size) -> np.ndarray:
    ranks = []
    for rows, scores in _row_blocks(text_features, image_features, block_size):
        ranks.append(rank_of(scores, text_to_image[rows]))
    return np.concatenate(ranks)


def _summary(direction: str, ranks: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    metrics = {f"{direction}_R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics[f"{direction}_mean_rank"] = float(ranks.mean())
    # open_clip's floor(median(rank - 1)) + 1, which is floor(median(rank))
    metrics[f"{direction}_median_rank"] = float(np.floor(np.median(ranks)))
    return metrics


def retrieval_metrics(
    image_features,
    text_features,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 4096,
) -> Dict[str, float]:
    """Recall@k (fractions in [0, 1]) and mean / median rank in both directions.

    image_features [N_img, D] and text_features [N_txt, D] are paddle tensors or numpy arrays;
    text_to_image [N_txt] is the index of each caption's image, and every image needs a caption.
    Keys: `image_to_text_R@{k}`, `image_to_text_mean_rank`, `image_to_text_median_rank`, and the
    same with `text_to_image_`. Similarities are computed `block_size` query rows at a time, so at
    most block_size x max(N_img, N_txt) scores exist at once; the result does not depend on it.
    """
    image_features = as_float_array(image_features, "image_features")
    text_features = as_float_array(text_features, "text_features")
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"need image_features [N_img, D] and text_features [N_txt, D], got {image_features.shape} "
            f"and {text_features.shape}"
        )
    num_images = image_features.shape[0]
    if num_images == 0:
        raise ValueError("retrieval_metrics needs at least one image")
    text_to_image = as_index_array(text_to_image, "text_to_image", size=num_images)
    if text_to_image.shape[0] != text_features.shape[0]:
        raise ValueError(f"{text_features.shape[0]} text features but {text_to_image.shape[0]} text_to_image entries")
    uncaptioned = np.setdiff1d(np.arange(num_images), text_to_image)
    if uncaptioned.size:
        raise ValueError(f"{uncaptioned.size} images have no caption in text_to_image (e.g. image {uncaptioned[0]})")
    if block_size < 1 or any(k < 1 for k in ks):
        raise ValueError(f"block_size and every k must be >= 1, got block_size={block_size}, ks={tuple(ks)}")
    arguments = (image_features, text_features, text_to_image, block_size)
    metrics = _summary("image_to_text", _image_to_text_ranks(*arguments), ks)
    metrics.update(_summary("text_to_image", _text_to_image_ranks(*arguments), ks))
    return metrics
