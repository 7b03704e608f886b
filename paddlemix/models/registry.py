"""Registry names (`paddlemix/<Family>/<Architecture>`) map to one packaged JSON config each."""

import difflib
from pathlib import Path
from typing import List

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
NAME_PREFIX = "paddlemix/"


class UnknownModelError(ValueError):
    """A name that is neither a registry name nor a model directory."""


def list_models() -> List[str]:
    """All registry names, e.g. 'paddlemix/CLIP/ViT-B-32'."""
    return sorted(
        f"{NAME_PREFIX}{path.parent.name}/{path.stem}" for path in MODEL_CONFIG_DIR.glob("*/*.json")
    )


def config_file(name: str) -> Path:
    """The packaged JSON of registry name `name`; UnknownModelError with the closest names otherwise."""
    if name.startswith(NAME_PREFIX):
        path = MODEL_CONFIG_DIR / f"{name[len(NAME_PREFIX):]}.json"
        if path.is_file():
            return path
    known = list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    if not close:  # 'ViT-B-32' alone: match on the architecture part of each name
        close = [known_name for known_name in known if name.split("/")[-1].lower() in known_name.lower()]
    hint = f" Closest registry names: {', '.join(close)}." if close else f" Registry names: {', '.join(known)}."
    raise UnknownModelError(f"'{name}' is neither a registry name nor a model directory.{hint}")
