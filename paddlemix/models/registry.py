"""Registry names (`paddlemix/<Family>/<Name>`) map to one packaged JSON config each.

The names are PaddleMIX's published zoo (its examples/{clip,evaclip,coca}/README.md), plus architecture
names under which nothing is published, to convert other projects' checkpoints into: four open_clip
CLIP architectures, open_clip's three CLIPs with a pretrained-language-model text tower (RoBERTa,
XLM-RoBERTa), transformers' CLIP-RoBERTa dual encoder, and five of open_clip's SigLIP / SigLIP 2
architectures (timm ViT image towers with an attention-pool head, bidirectional text towers). Each config holds the architecture (as its
producer's config of the same model) and `preprocess_cfg` (as open_clip's pretrained.py gives for
those weights); the download URL follows from the name (`hub.weights_url`).
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
NAME_PREFIX = "paddlemix/"
# Architecture names kept in the registry to convert other projects' checkpoints into; PaddleMIX
# publishes no weights under them (its README zoo tables list the published names).
ARCHITECTURE_ONLY_NAMES = frozenset({
    "paddlemix/CLIP/ViT-B-32",
    "paddlemix/CLIP/ViT-B-16",
    "paddlemix/CLIP/ViT-L-14",
    "paddlemix/CLIP/ViT-L-14-336",
    "paddlemix/CLIP/roberta-ViT-B-32",
    "paddlemix/CLIP/xlm-roberta-base-ViT-B-32",
    "paddlemix/CLIP/xlm-roberta-large-ViT-H-14",
    "paddlemix/CLIP/clip-roberta",
    "paddlemix/SigLIP/ViT-B-16-SigLIP",
    "paddlemix/SigLIP/ViT-B-16-SigLIP-256",
    "paddlemix/SigLIP/ViT-L-16-SigLIP-256",
    "paddlemix/SigLIP/ViT-SO400M-14-SigLIP",
    "paddlemix/SigLIP/ViT-B-16-SigLIP2",
})
# Architecture names whose producer is transformers, not open_clip: the model its folders hold (the
# contrastive-image-text example's `save_clip_roberta.py` step); `convert --source hf` reads them.
TRANSFORMERS_ARCHITECTURES = {
    "paddlemix/CLIP/clip-roberta": "VisionTextDualEncoderModel (from_vision_text_pretrained of "
                                   "openai/clip-vit-base-patch32 and FacebookAI/roberta-base)",
}
# open_clip's model name for each registry name's architecture where it differs from the last part of
# the name; DFN weights were trained with QuickGELU, open_clip's `-quickgelu` configs.
OPEN_CLIP_EQUIVALENTS = {
    "paddlemix/CLIP/CLIP-ViT-bigG-14-laion2B-39B-b160k": "ViT-bigG-14",
    "paddlemix/CLIP/CLIP-ViT-g-14-laion2B-s34B-b88K": "ViT-g-14",
    "paddlemix/CLIP/CLIP-ViT-H-14-laion2B-s32B-b79K": "ViT-H-14",
    "paddlemix/CLIP/CLIP-ViT-L-14-laion2B-s32B-b82K": "ViT-L-14",
    "paddlemix/CLIP/CLIP-ViT-B-16-laion2B-s34B-b88K": "ViT-B-16",
    "paddlemix/CLIP/CLIP-ViT-B-32-laion2B-s34B-b79K": "ViT-B-32",
    "paddlemix/CLIP/CLIP-ViT-L-14-DataComp.XL-s13B-b90K": "ViT-L-14",
    "paddlemix/CLIP/CLIP-ViT-B-16-DataComp.XL-s13B-b90K": "ViT-B-16",
    "paddlemix/CLIP/CLIP-ViT-B-32-DataComp.XL-s13B-b90K": "ViT-B-32",
    "paddlemix/CLIP/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K": "ViT-B-32-256",
    "paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378": "ViT-H-14-378-quickgelu",
    "paddlemix/CLIP/DFN5B-CLIP-ViT-H-14": "ViT-H-14-quickgelu",
    "paddlemix/CLIP/DFN2B-CLIP-ViT-L-14": "ViT-L-14-quickgelu",
    "paddlemix/CLIP/DFN2B-CLIP-ViT-B-16": "ViT-B-16-quickgelu",
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


def conversion_hint(name: str, output: Path) -> str:
    """Which checkpoint of another project holds registry name `name`'s architecture, and the command
    that converts it into `output`."""
    if name in TRANSFORMERS_ARCHITECTURES:
        return (f"a transformers {TRANSFORMERS_ARCHITECTURES[name]} save_pretrained folder, with its tokenizer files "
                f"(python -m paddlemix.tools.convert --source hf --checkpoint FOLDER --output {output})")
    return (f"a checkpoint of open_clip's '{open_clip_name(name)}' (python -m paddlemix.tools.convert --source "
            f"open_clip --model {name} --checkpoint FILE --output {output})")


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


@dataclass(frozen=True)
class ModelInfo:
    """One registry name as `python -m paddlemix.cli models` lists it."""

    name: str
    parameters: int
    image_size: Tuple[int, int]  # (height, width)
    weights_url: Optional[str]  # None: nothing published under this name
    weights_file: Path  # where from_pretrained reads the weights
    cached: bool  # weights_file exists


def describe_models(names: Optional[Sequence[str]] = None) -> List[ModelInfo]:
    """ModelInfo of `names` (default: every registry name); parameters are counted from shapes under
    paddle.LazyGuard(), so nothing is allocated."""
    import paddle

    from .auto import AutoConfig, AutoModel  # the model classes, which import this module
    from .hub import cached_weights_path, weights_url
    from .modeling_utils import parameter_count

    infos = []
    for name in list_models() if names is None else names:
        config = AutoConfig.from_pretrained(name)
        with paddle.LazyGuard():
            parameters = parameter_count(AutoModel.from_config(config))
        size = config.vision_cfg.image_size
        weights = cached_weights_path(name)
        infos.append(ModelInfo(name, parameters, (size, size) if isinstance(size, int) else tuple(size),
                               weights_url(name), weights, weights.is_file()))
    return infos


def resolve_model_name(name: str) -> str:
    """A directory or registry name as is; a bare architecture name (PaddleMIX's scripts pass
    `--pretrained_text_model EVA02-CLIP-L-14`) as the one registry name that ends with it."""
    if Path(name).expanduser().exists() or name in list_models():
        return name
    matches = [known for known in list_models() if known.endswith("/" + name)]
    return matches[0] if len(matches) == 1 else name
