"""Read `.pdparams` weight files without running code.

A `.pdparams` file is a pickle (`paddle.save`), and unpickling can call any importable function: a
crafted file runs code the moment `paddle.load` opens it. Weight files come from users, hubs and
other projects, so paddlemix reads them with an unpickler that can build only what `paddle.save`
writes for a state dict: dicts, lists, tuples, strings, numbers and numpy arrays. Any other object
in the file stops the read with an error naming the file and the object; nothing of it runs.

Paddle's conventions are kept: bfloat16 tensors are stored as uint16 arrays (returned here widened
to float32, which is exact), a `StructuredToParameterName@@` table of internal names is dropped,
and arrays that old protocols split into `key@@.N` slices (`UnpackBigParamInfor@@`) are joined.
"""

import pickle
from pathlib import Path
from typing import Dict, Union

import numpy as np

# The only globals a state dict written by paddle.save (any protocol, numpy 1 or 2) refers to.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(text, 'latin1')
}
NAME_TABLE_KEY = "StructuredToParameterName@@"
SPLIT_ARRAYS_KEY = "UnpackBigParamInfor@@"


class UnsafeWeightsFileError(ValueError):
    """A weights file holds something other than arrays and plain containers."""


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeWeightsFileError(
                f"{self.where}: refused to load: the file asks to build '{module}.{name}', which is not part "
                "of a weights file (only arrays and plain containers are read, so no code in it runs). "
                "If you trust the file, re-save its state dict as numpy arrays or safetensors."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafeWeightsFileError(f"{self.where}: refused to load: persistent ids ({pid!r}) are not used by paddle.save")


def _join_split_arrays(state: dict) -> dict:
    info = state.pop(SPLIT_ARRAYS_KEY, None)
    for key, parts in (info or {}).items():
        state[key] = np.concatenate([state.pop(part) for part in parts["slices"]]).reshape(parts["OriginShape"])
    return state


def _as_weight(value: np.ndarray, key: str, where: str) -> np.ndarray:
    if value.dtype == np.uint16:  # Paddle stores bfloat16 as its raw 16 bits
        return (value.astype(np.uint32) << 16).view(np.float32)
    if value.dtype.kind not in "fiub":
        raise UnsafeWeightsFileError(f"{where}: entry '{key}' is a {value.dtype} array, not numbers")
    return value


def read_pdparams(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """The state dict in a `.pdparams` file as {name: numpy array}, read without running any code."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            state = _StateDictUnpickler(file, str(path)).load()
    except UnsafeWeightsFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path}: not a readable .pdparams file ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: a .pdparams weights file holds a dict of arrays, this one a {type(state).__name__}")
    state.pop(NAME_TABLE_KEY, None)
    state = _join_split_arrays(state)
    weights = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: entry '{key}' is a {type(value).__name__}, not an array")
        weights[key] = _as_weight(value, key, str(path))
    return weights
