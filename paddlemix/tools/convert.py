"""Convert a foreign checkpoint into a paddlemix model directory (`config.json` + `model_state.pdparams`).

    python -m paddlemix.tools.convert --source open_clip --model paddlemix/CLIP/ViT-B-32 \\
        --checkpoint open_clip_model.safetensors --output ./ViT-B-32

`--model` is a registry name or an open_clip model config JSON. `--checkpoint` is a `.safetensors`
state dict (open_clip's published format) or a `.npz` (plain keys, or `sd/<key>` as written by the
reference dump). Every key must map, every model weight must be filled and every shape must match:
otherwise nothing is written and the offending keys are listed.
"""

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import paddle

from ..auto import AutoConfig, AutoModel
from ..models.configuration import CLIPConfig
from ..models.modeling_utils import parameter_count
from ..models.state_dict import StateDictMismatchError, check_state_dict
from ..utils.log import logger

# open_clip rebuilds these buffers itself; old checkpoints may still carry them.
OPEN_CLIP_REBUILT_BUFFERS = {"attn_mask", "visual.attn_mask"}

# (open_clip key pattern, paddlemix key template, transpose): torch Linear weights are [out, in],
# Paddle's are [in, out]; MultiheadAttention's packed in_proj is our fused qkv Linear.
OPEN_CLIP_RULES: List[Tuple[str, str, bool]] = [
    (r"(.*resblocks\.\d+)\.attn\.in_proj_weight", r"\1.attn.qkv.weight", True),
    (r"(.*resblocks\.\d+)\.attn\.in_proj_bias", r"\1.attn.qkv.bias", False),
    (r"(.*resblocks\.\d+\.(?:attn\.out_proj|mlp\.c_fc|mlp\.c_proj))\.weight", r"\1.weight", True),
    (r"text_projection\.weight", r"text_projection.weight", True),
]
# open_clip keeps the text tower's modules at the top level of CLIP; paddlemix nests them in `text.`
OPEN_CLIP_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def open_clip_key(key: str, value: np.ndarray) -> Tuple[str, np.ndarray]:
    """Map one open_clip CLIP state-dict entry to its paddlemix name and layout."""
    for pattern, template, transpose in OPEN_CLIP_RULES:
        if re.fullmatch(pattern, key):
            key, value = re.sub(pattern, template, key), (value.T if transpose else value)
            break
    if key.startswith(OPEN_CLIP_TEXT_PREFIXES):
        key = "text." + key
    return key, value


def convert_open_clip(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """open_clip CLIP state dict (numpy) -> paddlemix CLIP state dict (numpy)."""
    converted = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key  # DDP-saved checkpoints
        if key in OPEN_CLIP_REBUILT_BUFFERS:
            continue
        new_key, new_value = open_clip_key(key, value)
        converted[new_key] = np.array(new_value, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return converted


SOURCES: Dict[str, Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = {"open_clip": convert_open_clip}


def read_checkpoint(path: Path) -> Dict[str, np.ndarray]:
    """A state dict of numpy arrays from `.safetensors` or `.npz`."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
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
        f"--checkpoint {path}: unsupported format '{path.suffix}'; give a .safetensors or .npz state dict "
        "(a torch .pt/.bin can be re-saved with safetensors.torch.save_file(model.state_dict(), 'x.safetensors'))"
    )


def read_model_config(model: str) -> CLIPConfig:
    """A registry name, a paddlemix config.json, or an open_clip model config JSON."""
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        values = json.loads(path.read_text())
        values.setdefault("model_type", "clip")
        config = CLIPConfig.from_dict(values, where=str(path))
        config.name = path.stem
        return config
    return AutoConfig.from_pretrained(model)


def convert(source: str, model: str, checkpoint: Path, output: Path) -> Path:
    """Convert and write `output`; raises StateDictMismatchError before writing anything on a mismatch."""
    if source not in SOURCES:
        raise ValueError(f"--source {source!r} is not supported; choose from {', '.join(sorted(SOURCES))}")
    config = read_model_config(model)
    state = SOURCES[source](read_checkpoint(checkpoint))
    with paddle.LazyGuard():  # shapes only: check before allocating anything
        skeleton = AutoModel.from_config(config)
    expected = {key: tuple(int(d) for d in value.shape) for key, value in skeleton.state_dict().items()}
    check_state_dict(expected, state, source=f"{checkpoint} (after {source} key mapping)")
    net = AutoModel.from_config(config)
    for key, param in net.state_dict().items():
        param.set_value(paddle.to_tensor(state[key]).astype(param.dtype))
    net.save_pretrained(output)
    logger.info("wrote %s: %s parameters from %s", output, f"{parameter_count(net):,}", checkpoint)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, choices=sorted(SOURCES), help="checkpoint family")
    parser.add_argument("--model", required=True, help="registry name (paddlemix/CLIP/ViT-B-32) or config JSON")
    parser.add_argument("--checkpoint", required=True, type=Path, help=".safetensors or .npz state dict")
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert(args.source, args.model, args.checkpoint, args.output)
    except (StateDictMismatchError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
