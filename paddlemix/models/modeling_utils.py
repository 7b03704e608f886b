"""Saving and loading models in PaddleMIX's layout: `config.json` + `model_state.pdparams`."""

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import paddle

from .checkpoint_formats import convert_state
from .configuration import CONFIG_NAME
from .hub import WEIGHTS_NAME
from .layers.parallel import gather_unsharded_state_dict, model_parallel_rank, split_state_dict, tensor_parallel_layout
from .state_dict import load_state_dict_strict
from .weights_file import read_pdparams
from ..utils.log import logger


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
    """`save_pretrained(dir)` / `load_weights(file)` for a Layer that holds its dataclass `config`.

    Files are always unsharded: under tensor parallelism the shards are merged on save (rank 0 of
    the tensor-parallel group writes) and each rank takes its shard on load.
    """

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write `config.json` + `model_state.pdparams` into `directory`.

        Both files are written into a temporary folder beside them first and then renamed into
        place, so a save that fails (disk full, a kill) leaves the previous files whole.
        """
        directory = Path(directory)
        state = self.state_dict()
        if self.config.tensor_parallel_degree > 1:
            state = gather_unsharded_state_dict(state, tensor_parallel_layout(self))
            if model_parallel_rank() != 0:
                return directory
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory))
        try:
            dataclasses.replace(self.config, tensor_parallel_degree=1).save_pretrained(staging)
            paddle.save(state, str(staging / WEIGHTS_NAME))
            os.replace(staging / WEIGHTS_NAME, directory / WEIGHTS_NAME)
            os.replace(staging / CONFIG_NAME, directory / CONFIG_NAME)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def load_weights(self, weights_file: Union[str, Path], foreign_source: Optional[str] = None) -> None:
        """Load an unsharded `.pdparams` file strictly: every key present, none extra, every shape right.

        `foreign_source` (a checkpoint_formats source such as 'paddlemix'): a file whose keys are not
        this model's is converted from that layout first (PaddleMIX's published weights). The file is
        read without running code (`weights_file.read_pdparams`); float16 / bfloat16 weights are
        widened to the model's dtype.
        """
        state = read_pdparams(weights_file)
        if foreign_source is not None and set(state) != set(self.state_dict()):
            logger.info("%s is not in paddlemix's layout: converting it from %s's", weights_file, foreign_source)
            state = convert_state(foreign_source, state)
        degree = self.config.tensor_parallel_degree
        if degree > 1:
            state = split_state_dict(state, tensor_parallel_layout(self), degree, model_parallel_rank())
        load_state_dict_strict(self, state, source=str(weights_file))


__all__ = ["CONFIG_NAME", "PretrainedMixin", "WEIGHTS_NAME", "parameter_count"]
