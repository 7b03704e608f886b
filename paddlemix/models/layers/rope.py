"""2-D rotary position embedding of EVA-02 (Su et al. 2021; EVA-CLIP's VisionRotaryEmbeddingFast)."""

from typing import Tuple

import numpy as np
import paddle

from ...external_ops import fused_rope
from .kernels import custom_ops_allowed

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


def rope_rotations(sin_cos: np.ndarray) -> np.ndarray:
    """[1 + patches, head_dim, head_dim]: per token, the matrix M with x @ M = rope(x).

    rope(x) = x * cos + rot(x) * sin with rot(x0, x1, ...) = (-x1, x0, ...), so M = diag(cos) + R diag(sin).
    Row 0 is the identity: the class token is not rotated. M is block-diagonal with 2x2 blocks: the
    cpu_rope op reads only those; Paddle's ops apply it as one batched product per token, one einsum
    instead of Paddle's slow strided and broadcast elementwise ops on CPU.
    """
    sin, cos = np.split(sin_cos, 2, axis=-1)
    tokens, head_dim = sin.shape
    rotate = np.zeros((head_dim, head_dim), dtype=np.float32)
    rotate[np.arange(1, head_dim, 2), np.arange(0, head_dim, 2)] = -1.0
    rotate[np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)] = 1.0
    matrices = np.zeros((tokens + 1, head_dim, head_dim), dtype=np.float32)
    matrices[0] = np.eye(head_dim, dtype=np.float32)
    matrices[1:] = rotate[None] * sin[:, None, :]
    matrices[1:, np.arange(head_dim), np.arange(head_dim)] = cos
    return matrices


def apply_rope(x: paddle.Tensor, rotations: paddle.Tensor) -> paddle.Tensor:
    """Rotate x [batch, tokens, heads, head_dim] by rotations [(batch,) tokens, head_dim, head_dim] (from
    `rope_rotations`): by paddlemix's cpu_rope op where it can run them (float32 on CPU; one pass over x: about
    1 ms per call where the einsum takes 5, EVA02-B-16 at batch 8 on 2 cores), else by an einsum."""
    if custom_ops_allowed():
        y = fused_rope(x, rotations)
        if y is not None:
            return y
    if rotations.ndim == 3:
        return paddle.einsum("bnhd,nde->bnhe", x, rotations)
    return paddle.einsum("bnhd,bnde->bnhe", x, rotations)
