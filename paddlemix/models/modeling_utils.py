"""Saving and loading models in PaddleMIX's layout: `config.json` + `model_state.pdparams`."""

from pathlib import Path
from typing import Union

import paddle

from .configuration import CONFIG_NAME
from .hub import WEIGHTS_NAME
from .state_dict import load_state_dict_strict


def parameter_count(model: paddle.nn.Layer) -> int:
    """Number of parameter elements, from shapes alone (works under paddle.LazyGuard())."""
    total = 0
    for param in model.parameters():
        count = 1
        for dim in param.shape:
            count *= int(dim)
        total += count
    return total


class PretrainedMixin:
    """`save_pretrained(dir)` / `load_weights(file)` for a Layer that holds its dataclass `config`."""

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        self.config.save_pretrained(directory)
        paddle.save(self.state_dict(), str(directory / WEIGHTS_NAME))
        return directory

    def load_weights(self, weights_file: Union[str, Path]) -> None:
        """Load a `.pdparams` file strictly: every key present, none extra, every shape right."""
        load_state_dict_strict(self, paddle.load(str(weights_file)), source=str(weights_file))


__all__ = ["CONFIG_NAME", "PretrainedMixin", "WEIGHTS_NAME", "parameter_count"]
