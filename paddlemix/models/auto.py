"""`AutoConfig`, `AutoModel`: build or load any family by registry name or directory."""

import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Type, Union

from .checkpoint_formats.paddlemix import config_from_paddlemix, is_paddlemix_config
from .clip import CLIP
from .coca import CoCa
from .configuration import CONFIG_NAME, CLIPConfig, CoCaConfig
from .hub import WEIGHTS_NAME, cached_weights_file
from .registry import config_file

# model_type (in config.json) -> (config class, model class). Families register here.
# EVA-CLIP is CLIP with EVA vision-tower options switched on: the same classes serve it.
MODEL_TYPES: Dict[str, Tuple[Type, Type]] = {
    "clip": (CLIPConfig, CLIP),
    "evaclip": (CLIPConfig, CLIP),
    "coca": (CoCaConfig, CoCa),
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _load_config(path: Path):
    """paddlemix's config.json, or PaddleMIX's (its CLIP / EVA-CLIP / CoCa config, translated)."""
    values = _read_json(path)
    if is_paddlemix_config(values):
        values = config_from_paddlemix(values, where=str(path))
    model_type = values.get("model_type", "clip")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: unknown model_type {model_type!r}; known: {', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type][0].from_dict(values, where=str(path))


def _is_local(name_or_dir: Union[str, Path]) -> bool:
    return Path(name_or_dir).expanduser().exists()


class AutoConfig:
    @staticmethod
    def from_pretrained(name_or_dir: Union[str, Path]):
        """Config of a registry name (packaged, works offline), a model directory or a JSON file."""
        if _is_local(name_or_dir):
            path = Path(name_or_dir).expanduser()
            if path.is_dir():
                path = path / CONFIG_NAME
                if not path.is_file():
                    raise FileNotFoundError(f"{path.parent} is a directory without {CONFIG_NAME}")
            config = _load_config(path)
            config.name_or_path = str(path.parent)
            return config
        config = _load_config(config_file(str(name_or_dir)))
        config.name = config.name_or_path = str(name_or_dir)
        return config


class AutoModel:
    @staticmethod
    def from_config(config):
        """A randomly initialised model (call under paddle.LazyGuard() to defer allocation)."""
        if config.model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {config.model_type!r}; known: {', '.join(sorted(MODEL_TYPES))}")
        return MODEL_TYPES[config.model_type][1](config)

    @staticmethod
    def weights_of(name_or_dir: Union[str, Path]) -> Tuple[Path, Optional[str]]:
        """(weights file, the layout it may be in) of a model directory or a registry name."""
        if _is_local(name_or_dir):
            weights = Path(name_or_dir).expanduser() / WEIGHTS_NAME
            if not weights.is_file():
                raise FileNotFoundError(
                    f"{weights} does not exist: a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(written by save_pretrained or `python -m paddlemix.tools.convert`)"
                )
            return weights, ("paddlemix" if is_paddlemix_config(_read_json(weights.parent / CONFIG_NAME)) else None)
        return cached_weights_file(str(name_or_dir)), "paddlemix"  # community files: PaddleMIX's layout

    @staticmethod
    def from_pretrained(name_or_dir: Union[str, Path]):
        """Load `config.json` + `model_state.pdparams` from a directory, the cache or the community URL.

        The model is returned in eval mode.
        """
        config = AutoConfig.from_pretrained(name_or_dir)
        weights, foreign_source = AutoModel.weights_of(name_or_dir)
        model = AutoModel.from_config(config)
        model.load_weights(weights, foreign_source)
        model.eval()
        return model
