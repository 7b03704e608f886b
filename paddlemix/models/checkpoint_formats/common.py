"""Helpers every checkpoint layout shares: key renaming, wrapper stripping, torch -> Paddle layout."""

import re
from typing import Dict, List, Tuple

import numpy as np

State = Dict[str, np.ndarray]

# Buffers the models rebuild themselves; checkpoints may carry them.
REBUILT_BUFFERS = re.compile(r"(?:visual\.|text\.|text_decoder\.)?attn_mask|visual\.(?:trunk\.)?rope\..*")
# Keys of 2-D tensors that are not torch Linear weights (kept as they are).
NOT_LINEAR = {"text.token_embedding.weight"}


def rename(key: str, rules: List[Tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def strip_wrappers(state: State) -> State:
    """Drop `module.` (DDP) prefixes and the buffers the model rebuilds."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not REBUILT_BUFFERS.fullmatch(key):
            out[key] = value
    return out


def torch_to_paddle_layout(state: State) -> State:
    """Transpose torch Linear weights ([out, in]) to Paddle's [in, out]; logit_scale (0-d in open_clip) to [1]."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and key not in NOT_LINEAR:
            value = value.T
        if key == "logit_scale" and value.size == 1:
            value = value.reshape([1])
        out[key] = np.array(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


