"""Ranks under one tie rule, shared by zero-shot accuracy and retrieval recall.

The rule is that of a stable sort by descending score: an item ranks behind every strictly higher
score and behind equal scores at a lower index. It is the rule `argmax` follows, so a collapsed model
whose scores are all equal gets chance-level numbers, not a perfect score, and the rank of an item
depends only on its own row of scores, never on how rows were batched.
"""

import numpy as np
import paddle


def as_float_array(values, name: str) -> np.ndarray:
    """paddle.Tensor or array-like -> numpy float32 (float64 kept); raises if `values` has NaN or inf.

    Non-finite scores would compare false with everything and so rank first: a diverged model would
    get a perfect score, hence the error.
    """
    if isinstance(values, paddle.Tensor):
        values = values.detach()
        if values.dtype != paddle.float64:
            values = values.astype(paddle.float32)  # bfloat16 has no numpy dtype
        values = values.numpy()
    array = np.asarray(values)
    array = array.astype(np.promote_types(array.dtype, np.float32), copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's outputs (did training diverge?)")
    return array


def as_index_array(values, name: str, size: int) -> np.ndarray:
    """paddle.Tensor or array-like of integers in [0, size) -> 1-D numpy int64."""
    if isinstance(values, paddle.Tensor):
        values = values.numpy()
    array = np.asarray(values).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ValueError(f"{name} holds indices in [{array.min()}, {array.max()}], outside [0, {size})")
    return array


def rank_of(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """scores [N, M], columns [N] int -> int64 [N]: the 1-based rank of scores[n, columns[n]] in row n."""
    own = np.take_along_axis(scores, columns[:, None], axis=1)
    tied_before = (scores == own) & (np.arange(scores.shape[1]) < columns[:, None])
    return 1 + np.count_nonzero((scores > own) | tied_before, axis=1)
