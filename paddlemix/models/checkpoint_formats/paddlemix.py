"""PaddleMIX's `model_state.pdparams` (Paddle [in, out] Linear weights)."""

import re

import numpy as np

from .common import NOT_LINEAR, State, rename, strip_wrappers
from .eva_clip import rename_eva_clip

def _is_paddle_linear(key: str, value: np.ndarray) -> bool:
    return (key.endswith(".weight") and value.ndim == 2 and key not in NOT_LINEAR) or key.endswith(".in_proj_weight")


def rename_paddlemix(state: State) -> State:
    """PaddleMIX's EVA-CLIP `model_state.pdparams`: EVA-CLIP names, Paddle [in, out] Linear weights,
    q/k/v as separate projections (`q_proj.bias`/`v_proj.bias` are EVA's q_bias/v_bias; the text
    tower's q/k/v/out_proj are open_clip's packed in_proj + out_proj)."""
    state = strip_wrappers(state)
    torch_layout = {k: (v.T if _is_paddle_linear(k, v) else v) for k, v in state.items()}
    out = {}
    for key, value in torch_layout.items():
        text_qkv = re.fullmatch(r"(text\..*resblocks\.\d+\.attn)\.([qkv])_proj\.(weight|bias)", key)
        if text_qkv:
            block, projection, kind = text_qkv.groups()
            parts = [torch_layout.get(f"{block}.{n}_proj.{kind}") for n in "qkv"]
            if any(part is None for part in parts):  # incomplete: left for the key check to report
                out[key] = value
            elif projection == "q":
                out[f"{block}.in_proj_{kind}"] = np.concatenate(parts, axis=0)
            continue
        if key.startswith("visual."):
            key = rename(key, [(r"\.attn\.q_proj\.bias$", ".attn.q_bias"), (r"\.attn\.v_proj\.bias$", ".attn.v_bias")])
        out[key] = value
    return rename_eva_clip(out)


