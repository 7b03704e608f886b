"""The contrastive loss with shared-image / shared-caption pairs left out, written from its definition
in float64 numpy: a loop over rows that drops the masked columns. The reference of
tests/test_duplicate_pairs.py and tests/test_duplicate_pairs_distributed.py.

For pairs i = 0..N-1 with logits z[i, j] = scale * image[i] . text[j], column j != i is dropped from
row i of both directions when image_key[i] == image_key[j] or caption_key[i] == caption_key[j]:
    L = ( sum_i -log softmax_{j kept}(z[i, :])[i] + sum_j -log softmax_{i kept}(z[:, j])[j] ) / (2N)
"""

import numpy as np

# A COCO-like batch of 20 pairs: 4 images with 5 captions each, shuffled, and two captions ('a dog',
# 'a cat') written for two images each. Rows 0-9 and 10-19 both hold every image: split over ranks,
# duplicates cross them.
IMAGE_OF_ROW = np.array([0, 1, 0, 2, 3, 1, 0, 2, 2, 3, 1, 0, 3, 1, 2, 0, 3, 1, 2, 3])
CAPTION_OF_ROW = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 8, 9, 10, 11, 1, 12, 13, 14, 15, 16, 17])


def kept_columns(i, image_keys, caption_keys):
    """The columns row i's softmax keeps: its own, and every pair sharing neither image nor caption."""
    return [j for j in range(len(image_keys))
            if j == i or (image_keys[j] != image_keys[i] and caption_keys[j] != caption_keys[i])]


def _row_loss_and_grad(logits_row, kept, target):
    """-log softmax over `kept` at `target`, and its gradient w.r.t. the whole row (0 where dropped)."""
    values = logits_row[kept]
    shifted = values - values.max()
    log_norm = np.log(np.exp(shifted).sum())
    probabilities = np.exp(shifted - log_norm)
    grad = np.zeros_like(logits_row)
    grad[kept] = probabilities
    grad[target] -= 1.0
    return -(shifted[kept.index(target)] - log_norm), grad


def masked_clip_loss(image, text, scale, image_keys, caption_keys):
    """(loss, d loss / d image, d loss / d text, d loss / d scale), all float64."""
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    n = image.shape[0]
    similarity = image @ text.T
    logits = scale * similarity
    grad_logits = np.zeros_like(logits)  # d L / d z[i, j], both directions summed
    loss = 0.0
    for i in range(n):
        kept = kept_columns(i, image_keys, caption_keys)
        image_to_text, grad_row = _row_loss_and_grad(logits[i], kept, i)  # image i against the texts
        text_to_image, grad_column = _row_loss_and_grad(logits[:, i], kept, i)  # text i against the images
        loss += image_to_text + text_to_image
        grad_logits[i] += grad_row
        grad_logits[:, i] += grad_column
    loss, grad_logits = loss / (2 * n), grad_logits / (2 * n)
    return (loss, scale * grad_logits @ text, scale * grad_logits.T @ image,
            float((grad_logits * similarity).sum()))
