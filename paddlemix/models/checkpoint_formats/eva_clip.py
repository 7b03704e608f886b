"""The EVA-CLIP repository's checkpoints (torch): EVA vision tower + open_clip text tower.

EVA vision towers have three spellings: the EVA-CLIP repository's (`visual.blocks.N.mlp.w1`,
`attn.inner_attn_ln`, ...), timm's inside open_clip (`visual.trunk.blocks.N.mlp.fc1_g`, `attn.norm`,
...) and PaddleMIX's (EVA-CLIP's names in Paddle's layout, q/k/v as separate projections); the other
two are first brought to EVA-CLIP's, so this one table maps EVA towers to paddlemix.
"""

import re
from typing import List, Tuple

import numpy as np

from .common import State, invert_rules, rename, strip_wrappers
from .open_clip_names import OPEN_CLIP_RENAMES

# EVA-CLIP repository names -> paddlemix.
EVA_RENAMES: List[Tuple[str, str]] = [
    (r"^visual\.cls_token$", "visual.class_embedding"),
    (r"^visual\.pos_embed$", "visual.positional_embedding"),
    (r"^visual\.patch_embed\.proj\.", "visual.conv1."),
    (r"^visual\.blocks\.", "visual.transformer.resblocks."),
    (r"\.norm1\.", ".ln_1."),
    (r"\.norm2\.", ".ln_2."),
    (r"\.gamma_1$", ".ls_1.gamma"),
    (r"\.gamma_2$", ".ls_2.gamma"),
    (r"\.attn\.proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"^visual\.norm\.", "visual.ln_post."),  # class-token pooling
    (r"^visual\.fc_norm\.", "visual.ln_post."),  # mean pooling
    (r"^visual\.head\.bias$", "visual.proj_bias"),
]


def eva_visual_to_paddlemix(state: State) -> State:
    """EVA-CLIP-named `visual.*` entries (torch layout) -> paddlemix names; other keys unchanged."""
    out = {}
    for key, value in state.items():
        if not key.startswith("visual."):
            out[key] = value
        elif key == "visual.head.weight":  # a Linear in EVA, a [width, embed] matrix here
            out["visual.proj"] = value.T
        elif re.fullmatch(r"visual\.blocks\.\d+\.attn\.[kv]_proj\.weight", key):
            continue  # packed with q_proj below
        elif key.endswith(".attn.q_proj.weight"):
            block = key[: -len(".q_proj.weight")]
            packed = np.concatenate([state[f"{block}.{n}_proj.weight"] for n in "qkv"], axis=0)
            out[rename(f"{block}.qkv.weight", EVA_RENAMES)] = packed
        else:
            value = value.reshape(value.shape[-1]) if key == "visual.cls_token" else value
            value = value.reshape(value.shape[-2:]) if key == "visual.pos_embed" else value
            out[rename(key, EVA_RENAMES)] = value
    return out


PADDLEMIX_TO_EVA = invert_rules(EVA_RENAMES)


def paddlemix_visual_to_eva(state: State, fused_qkv: bool, pool_norm: str) -> State:
    """The inverse of eva_visual_to_paddlemix. fused_qkv: keep one `qkv` Linear (EVA01) or split it into
    q/k/v_proj (EVA02); pool_norm: the final norm's name, 'norm' (class token) or 'fc_norm' (mean pooling)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("visual."):
            out[key] = value
            continue
        if key == "visual.proj":
            out["visual.head.weight"] = value.T
            continue
        key = key.replace("visual.ln_post.", f"visual.{pool_norm}.")
        eva_key = rename(key, PADDLEMIX_TO_EVA)
        value = value.reshape(1, 1, -1) if eva_key == "visual.cls_token" else value
        value = value[None] if eva_key == "visual.pos_embed" else value
        if eva_key.endswith(".attn.qkv.weight") and not fused_qkv:
            for name, part in zip("qkv", np.split(value, 3, axis=0)):
                out[eva_key.replace(".qkv.", f".{name}_proj.")] = part
        else:
            out[eva_key] = value
    return out


def rename_eva_clip(state: State) -> State:
    """The EVA-CLIP repository's checkpoints (torch): EVA vision tower + open_clip text tower."""
    state = strip_wrappers(state)
    return eva_visual_to_paddlemix({rename(k, OPEN_CLIP_RENAMES): v for k, v in state.items()})


