"""Convert a foreign checkpoint into a paddlemix model directory (`config.json` + `model_state.pdparams`).

    python -m paddlemix.tools.convert --source open_clip --model paddlemix/CLIP/ViT-B-32 \\
        --checkpoint open_clip_model.safetensors --output ./ViT-B-32

Sources: `open_clip` (CLIP, and EVA-CLIP and SigLIP with their timm trunks `visual.trunk.*`), `eva_clip` (the
EVA-CLIP repository's checkpoints: `visual.blocks.N.attn.q_proj`, `mlp.w1/w2/w3`, `ffn_ln`, ...),
`paddlemix` (PaddleMIX's CLIP / EVA-CLIP / CoCa `model_state.pdparams`) and `timm` (a bare timm image tower,
`timm.create_model(name).state_dict()`, e.g. a SigLIP ViT: it fills the model's image tower, and the text
tower and logit scale / bias keep their fresh initialisation, with a warning).
`--model` is a registry name or a model config JSON (paddlemix's, PaddleMIX's `config.json`, or
open_clip's). `--checkpoint` is a `.safetensors` state dict (open_clip's published format), a
`.pdparams` (read without running code: only arrays and plain containers are accepted) or a `.npz`
(plain keys, or `sd/<key>` as written by the reference dump). Every key must map, every model weight must
be filled and every shape must match: otherwise nothing is written and the offending keys are
listed. The one tensor adapted is the image position embedding, resampled when the checkpoint was
trained at another resolution (as EVA-CLIP does for its 336-pixel models).

`--source hf --checkpoint DIR` reads a transformers `save_pretrained` folder of a CLIPModel, a SiglipModel or a
VisionTextDualEncoderModel (config.json + model.safetensors): the architecture comes from its
config.json, so no `--model`. A model with a PaddleNLP text tower reads its tokenizer from its folder:
the tokenizer files next to the checkpoint are copied along, on import and on export.

    python -m paddlemix.tools.convert --to hf|open_clip --model DIR_OR_NAME --output OUT

exports a paddlemix model the other way (see paddlemix.models.checkpoint_formats.export): a model
the format cannot express is refused with the reason, and nothing is written.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import paddle

from ..models.auto import MODEL_TYPES, AutoConfig, AutoModel
from ..models.clip.towers import resample_positional_embedding
from ..models.configuration import CLIPConfig
from ..models.modeling_utils import parameter_count
from ..models.state_dict import StateDictMismatchError, check_state_dict
from ..utils.log import logger
from ..models.checkpoint_formats import IMAGE_TOWER_ONLY, SOURCES, convert_state
from ..models.checkpoint_formats.common import unclamp_logit_scale
from ..models.checkpoint_formats.paddlemix import config_from_paddlemix, is_paddlemix_config
from ..models.weights_file import read_pdparams
from ..models.checkpoint_formats.export import FORMATS, export_files, write_files
from ..models.checkpoint_formats.hf import read_hf_folder
from ..models.checkpoint_formats.hf_dual_encoder import copy_tokenizer_files

POSITIONAL_EMBEDDING = "visual.positional_embedding"
IMAGE_TOWER = "visual."  # the state-dict prefix of the image tower

def read_checkpoint(path: Path) -> Dict[str, np.ndarray]:
    """A state dict of numpy arrays from `.safetensors`, `.npz` or `.pdparams` (read without running code)."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    if path.suffix == ".pdparams":
        return read_pdparams(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = archive.files
            if any(k.startswith("sd/") for k in keys):  # reference dump: weights under sd/
                return {k[3:]: archive[k] for k in keys if k.startswith("sd/")}
            return {k: archive[k] for k in keys}
    raise ValueError(
        f"--checkpoint {path}: unsupported format '{path.suffix}'; give a .safetensors, .npz or .pdparams state dict "
        "(a torch .pt/.bin can be re-saved with safetensors.torch.save_file(model.state_dict(), 'x.safetensors'))"
    )


# open_clip config keys that do not change the architecture: its module layout (paddlemix always
# nests the text tower under `text.`, and its towers return their tokens to whoever asks) and
# multimodal_cfg.attn_pooler_heads, which open_clip's CoCa never reads (the image tower's is used)
OPEN_CLIP_IGNORED_KEYS = {"": ("custom_text",), "vision_cfg": ("output_tokens",), "text_cfg": ("output_tokens",),
                          "multimodal_cfg": ("attn_pooler_heads",)}


def read_model_config(model: str) -> CLIPConfig:
    """A registry name, a paddlemix config.json, or an open_clip model config JSON."""
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        values = json.loads(path.read_text())
        if is_paddlemix_config(values):  # PaddleMIX's config.json
            values = config_from_paddlemix(values, where=str(path))
        if "model_cfg" in values:  # open_clip's hub layout (open_clip_config.json)
            values = dict(values["model_cfg"], preprocess_cfg={
                k: v for k, v in values.get("preprocess_cfg", {}).items() if k != "size"})
        if "model_type" not in values:  # open_clip's: a decoder config makes it CoCa
            values["model_type"] = "coca" if "multimodal_cfg" in values else "clip"
            for section, keys in OPEN_CLIP_IGNORED_KEYS.items():
                for key in keys:
                    (values.get(section, {}) if section else values).pop(key, None)
            norm_kwargs = values.get("vision_cfg", {}).pop("norm_kwargs", {})
            if set(norm_kwargs) - {"eps"}:
                raise ValueError(f"{path}: vision_cfg.norm_kwargs {norm_kwargs}: paddlemix's LayerNorms take only eps")
            if "eps" in norm_kwargs:
                values["vision_cfg"]["norm_eps"] = norm_kwargs["eps"]
        if values["model_type"] not in MODEL_TYPES:
            raise ValueError(f"{path}: unknown model_type {values['model_type']!r}; known: {', '.join(MODEL_TYPES)}")
        config = MODEL_TYPES[values["model_type"]][0].from_dict(values, where=str(path))
        config.name = path.stem
        return config
    return AutoConfig.from_pretrained(model)


def fit_positional_embedding(state: Dict[str, np.ndarray], expected_shape: tuple, checkpoint: Path,
                             prefix_tokens: int = 1) -> None:
    """Resample the image tower's absolute position embedding to the model's grid (224 -> 336 pixels);
    prefix_tokens: 1 with a class token, 0 without (SigLIP)."""
    given = state.get(POSITIONAL_EMBEDDING)
    if given is None or tuple(given.shape) == tuple(expected_shape) or given.shape[-1] != expected_shape[-1]:
        return  # absent or already right; a width mismatch is reported by the shape check
    state[POSITIONAL_EMBEDDING] = resample_positional_embedding(given, expected_shape[0], prefix_tokens)
    logger.warning(
        "%s: %s has %d tokens, the model %d: resampled (bicubic) to the model's patch grid",
        checkpoint, POSITIONAL_EMBEDDING, given.shape[0], expected_shape[0],
    )


def convert(source: str, model: Optional[str], checkpoint: Path, output: Path) -> Path:
    """Convert and write `output`; raises StateDictMismatchError before writing anything on a mismatch.
    `model` is None for `hf`, whose folder holds its own architecture."""
    if source == "hf":
        if model is not None:
            raise ValueError("--model: a transformers folder's config.json is its architecture; leave --model out")
        config, foreign = read_hf_folder(checkpoint)
    elif model is None:
        raise ValueError(f"--source {source} needs --model (a registry name or a config JSON)")
    else:
        config, foreign = read_model_config(model), read_checkpoint(checkpoint)
    state = convert_state(source, foreign, config.text_cfg)
    unclamp_logit_scale(config, state)
    with paddle.LazyGuard():  # shapes only: check before allocating anything
        skeleton = AutoModel.from_config(config)
    expected = {key: tuple(int(d) for d in value.shape) for key, value in skeleton.state_dict().items()}
    if source in IMAGE_TOWER_ONLY:
        expected = {key: shape for key, shape in expected.items() if key.startswith(IMAGE_TOWER)}
    if POSITIONAL_EMBEDDING in expected:
        fit_positional_embedding(state, expected[POSITIONAL_EMBEDDING], checkpoint, int(config.vision_cfg.class_token))
    check_state_dict(expected, state, source=f"{checkpoint} (after {source} key mapping)")
    net = AutoModel.from_config(config)
    for key, param in net.state_dict().items():
        if key in expected:
            param.set_value(paddle.to_tensor(state[key]).astype(param.dtype))
    if source in IMAGE_TOWER_ONLY:
        fresh = sorted({key.split(".")[0] for key in net.state_dict()} - {IMAGE_TOWER.rstrip(".")})
        logger.warning("%s holds an image tower only: %s keep their fresh initialisation; train them (--lock_image "
                       "keeps the image tower as it is) or take a text tower with --pretrained_text_model",
                       checkpoint, ", ".join(fresh))
    net.save_pretrained(output)
    copy_tokenizer_files(config, checkpoint if checkpoint.is_dir() else checkpoint.parent, output)
    logger.info("wrote %s: %s parameters from %s", output, f"{parameter_count(net):,}", checkpoint)
    return output


def export(fmt: str, model: str, output: Path) -> Path:
    """Write paddlemix model `model` (directory or registry name) to `output` in format `fmt`;
    raises ExportRefused, with nothing written, where `fmt` cannot express the model."""
    net = AutoModel.from_pretrained(model)
    files = export_files(fmt, net.config, {key: value.numpy() for key, value in net.state_dict().items()})
    write_files(files, output)
    copied = copy_tokenizer_files(net.config, Path(model), output) if Path(model).is_dir() else []
    logger.info("wrote %s (%s): %s", output, fmt, ", ".join([*files, *copied]))
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--source", choices=sorted(SOURCES), help="import: the checkpoint's family")
    direction.add_argument("--to", choices=sorted(FORMATS), help="export: the format to write")
    parser.add_argument("--model", help="registry name (paddlemix/CLIP/ViT-B-32) or config JSON; for --to, "
                        "also a paddlemix model directory; not with --source hf")
    parser.add_argument("--checkpoint", type=Path, help="import: .safetensors, .pdparams or .npz state dict (hf: the folder)")
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    args = parser.parse_args(argv)
    if args.to and (args.model is None or args.checkpoint is not None):
        parser.error("--to takes --model (the paddlemix model to export) and no --checkpoint")
    if args.source and args.checkpoint is None:
        parser.error(f"--source {args.source} needs --checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.to:
            export(args.to, args.model, args.output)
        else:
            convert(args.source, args.model, args.checkpoint, args.output)
    except (StateDictMismatchError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
