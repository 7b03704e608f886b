"""Helpers every checkpoint layout shares: key renaming, wrapper stripping, torch -> Paddle layout."""

import logging
import re
from typing import Dict, List, Tuple

import numpy as np

logger = logging.getLogger(__name__)

State = Dict[str, np.ndarray]

# Buffers the models rebuild themselves; checkpoints may carry them.
REBUILT_BUFFERS = re.compile(r"(?:visual\.|text\.|text_decoder\.)?attn_mask|visual\.(?:trunk\.)?rope\..*")
# Keys of 2-D tensors that are not torch Linear weights (kept as they are): the token embedding, and
# the embeddings of a PaddleNLP text tower (word, position, token type).
NOT_LINEAR = re.compile(r"text\.token_embedding\.weight|text\.transformer\.embeddings\.\w+_embeddings\.weight")


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


# The model's learned scalars: 0-d in open_clip (and torch checkpoints generally), [1] in paddlemix.
SCALARS = ("logit_scale", "logit_bias")


def _transpose_linear_weights(state: State, scalar_shape: List[int]) -> State:
    out = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and not NOT_LINEAR.fullmatch(key):
            value = value.T
        if key in SCALARS and value.size == 1:
            value = value.reshape(scalar_shape)
        out[key] = np.array(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def torch_to_paddle_layout(state: State) -> State:
    """Transpose torch Linear weights ([out, in]) to Paddle's [in, out]; logit_scale and logit_bias (0-d in
    open_clip) to [1]."""
    return _transpose_linear_weights(state, [1])


def paddle_to_torch_layout(state: State) -> State:
    """The inverse of torch_to_paddle_layout: Linear weights back to [out, in], logit_scale and logit_bias to 0-d."""
    return _transpose_linear_weights(state, [])


_GROUP_PREFIX = re.compile(r"(\((?:[^()\\]|\\.)*\))?(.*)")


def invert_rules(rules: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """`rename` rules read backwards: applied to the renamed keys, they give the original keys back.

    Each rule must be a literal (escaped) pattern, optionally anchored (`^`, `$`) and optionally
    starting with one capture group that its replacement starts with (`\\1`); rules applied in
    reverse order.
    """
    inverse = []
    for pattern, replacement in reversed(rules):
        start, end = pattern.startswith("^"), pattern.endswith("$") and not pattern.endswith("\\$")
        body = pattern[int(start): len(pattern) - int(end)]
        group, literal = _GROUP_PREFIX.fullmatch(body).groups()
        plain = re.sub(r"\\(.)", r"\1", literal)
        if re.escape(plain) != literal.replace("\\_", "_") or replacement.startswith("\\1") != bool(group):
            raise ValueError(f"rename rule {pattern!r} -> {replacement!r} is not a literal rule and has no inverse")
        target = replacement[2:] if group else replacement
        inverse_pattern = ("^" if start else "") + (group or "") + re.escape(target) + ("$" if end else "")
        inverse.append((inverse_pattern, ("\\1" if group else "") + plain))
    return inverse


def stored_logit_scale(state: State) -> float:
    """The checkpoint's logit_scale (its log), 0 where it has none."""
    return float(np.asarray(state.get("logit_scale", 0.0)).reshape(-1)[0])


def unclamp_logit_scale(config, state: State) -> None:
    """Raise config.max_logit_scale to the checkpoint's logit_scale where it is higher. paddlemix clamps
    the scale in forward (at ln 100 by default); open_clip, transformers and PaddleMIX do not (open_clip
    clamps in its training loop), and trained SigLIPs sit above ln 100: the converted model then keeps
    its producer's logits and sigmoid probabilities."""
    stored = stored_logit_scale(state)
    if stored > config.max_logit_scale:
        logger.warning("logit_scale %.4f exceeds max_logit_scale %.4f, where paddlemix clamps it: max_logit_scale "
                       "set to %.4f, as the checkpoint's producer does not clamp", stored, config.max_logit_scale,
                       stored)
        config.max_logit_scale = stored
