"""2-D rotary position embedding of EVA-02 (Su et al. 2021; EVA-CLIP's VisionRotaryEmbeddingFast)."""

from typing import Tuple

import numpy as np
import paddle

ROPE_THETA = 10000.0  # frequency base, as in EVA-CLIP and timm


def rope_sin_cos(head_dim: int, grid: Tuple[int, int], pt_seq_len: int, intp_freq: bool) -> np.ndarray:
    """[grid_h * grid_w, 2 * head_dim] float32: sin then cos of each patch's rotation angles.

    The first half of each head's channels rotates with the patch row, the second half with the
    column; channel pairs (2i, 2i+1) share an angle. With `intp_freq`, positions of a grid other
    than the pretrained `pt_seq_len` are rescaled onto it (EVA-02 at 336 pixels, grid 24 -> 16).
    """
    if head_dim % 4:
        raise ValueError(f"rope needs a head width divisible by 4, got {head_dim}")
    bands = 1.0 / ROPE_THETA ** (np.arange(head_dim // 4, dtype=np.float32) / (head_dim // 4))
    axes = []
    for side in grid:
        position = np.arange(side, dtype=np.float32)
        if intp_freq:
            position = position / side * pt_seq_len
        axes.append(position)
    rows, cols = np.meshgrid(*axes, indexing="ij")
    angles = np.concatenate([rows[..., None] * bands, cols[..., None] * bands], axis=-1)
    angles = np.repeat(angles.reshape(-1, head_dim // 2), 2, axis=-1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def apply_rope(x: paddle.Tensor, rope: paddle.Tensor) -> paddle.Tensor:
    """Rotate x [batch, tokens, heads, head_dim] by rope [(batch,) tokens, 2 * head_dim] (sin ‖ cos)."""
    sin, cos = rope.unsqueeze(-2).chunk(2, axis=-1)  # broadcast over heads
    if sin.ndim < x.ndim:
        sin, cos = sin.unsqueeze(0), cos.unsqueeze(0)
    # (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
    rotated = paddle.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)
    return x * cos + rotated * sin
