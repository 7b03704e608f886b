"""Strict state-dict loading: a key that is missing, unexpected or of the wrong shape is an error."""

from typing import Dict, Mapping

import numpy as np
import paddle


class StateDictMismatchError(ValueError):
    """The weights do not fit the model; the message lists every offending key."""


def _shape(value) -> tuple:
    return tuple(int(d) for d in value.shape)


def check_state_dict(expected: Mapping[str, tuple], given: Mapping[str, object], source: str) -> None:
    """Raise StateDictMismatchError naming all missing, unexpected and wrongly shaped keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [
        f"{key}: expected {expected[key]}, got {_shape(given[key])}"
        for key in sorted(set(expected) & set(given))
        if tuple(expected[key]) != _shape(given[key])
    ]
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"weights from {source} do not fit the model:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
    raise StateDictMismatchError("\n".join(lines))


def load_state_dict_strict(model: paddle.nn.Layer, state_dict: Dict[str, object], source: str) -> None:
    """Copy `state_dict` (numpy arrays or tensors) into `model`, all keys and shapes checked first."""
    params = model.state_dict()
    check_state_dict({key: _shape(value) for key, value in params.items()}, state_dict, source)
    for key, target in params.items():
        value = state_dict[key]
        if not isinstance(value, paddle.Tensor):
            value = paddle.to_tensor(np.asarray(value))
        target.set_value(value.astype(target.dtype))
