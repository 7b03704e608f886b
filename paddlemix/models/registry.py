"""Registry names (`paddlemix/<Family>/<Architecture>`) map to one packaged JSON config each."""

import difflib
from pathlib import Path
from typing import List

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
NAME_PREFIX = "paddlemix/"
# Registry names whose architecture open_clip knows under another name (the CLIP names are the same).
OPEN_CLIP_EQUIVALENTS = {
    "paddlemix/EVA/EVA01-CLIP-g-14": "EVA01-g-14",
    "paddlemix/EVA/EVA01-CLIP-g-14-plus": "EVA01-g-14-plus",
    "paddlemix/EVA/EVA02-CLIP-B-16": "EVA02-B-16",
    "paddlemix/EVA/EVA02-CLIP-L-14": "EVA02-L-14",
    "paddlemix/EVA/EVA02-CLIP-L-14-336": "EVA02-L-14-336",
    "paddlemix/EVA/EVA02-CLIP-bigE-14": "EVA02-E-14",
    "paddlemix/EVA/EVA02-CLIP-bigE-14-plus": "EVA02-E-14-plus",
    "paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k": "coca_ViT-B-32",
    "paddlemix/CoCa/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k": "coca_ViT-B-32",
    "paddlemix/CoCa/CoCa-ViT-L-14-laion2B-s13B-b90k": "coca_ViT-L-14",
    "paddlemix/CoCa/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k": "coca_ViT-L-14",
}


class UnknownModelError(ValueError):
    """A name that is neither a registry name nor a model directory."""


def list_models() -> List[str]:
    """All registry names, e.g. 'paddlemix/CLIP/ViT-B-32'."""
    return sorted(
        f"{NAME_PREFIX}{path.parent.name}/{path.stem}" for path in MODEL_CONFIG_DIR.glob("*/*.json")
    )


def open_clip_name(name: str) -> str:
    """open_clip's model name for the architecture of registry name `name`."""
    return OPEN_CLIP_EQUIVALENTS.get(name, name.split("/")[-1])


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


def resolve_model_name(name: str) -> str:
    """A directory or registry name as is; a bare architecture name (PaddleMIX's scripts pass
    `--pretrained_text_model EVA02-CLIP-L-14`) as the one registry name that ends with it."""
    if Path(name).expanduser().exists() or name in list_models():
        return name
    matches = [known for known in list_models() if known.endswith("/" + name)]
    return matches[0] if len(matches) == 1 else name
