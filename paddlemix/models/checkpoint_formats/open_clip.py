"""open_clip checkpoints: CLIP / CustomTextCLIP / CoCa, with an OpenAI ViT or a timm EVA trunk."""

import re
from typing import List, Tuple

import numpy as np

from .common import State, rename, strip_wrappers
from .eva_clip import eva_visual_to_paddlemix
from .open_clip_names import OPEN_CLIP_RENAMES, OPEN_CLIP_TEXT_PREFIXES

# timm Eva (open_clip's `visual.trunk.`) -> EVA-CLIP repository names, the inverse of
# timm.models.eva.checkpoint_filter_fn. `mlp.fc2` is SwiGLU's `w3` only where `mlp.fc1_g` exists.
TIMM_TO_EVA_RENAMES: List[Tuple[str, str]] = [
    (r"visual\.trunk\.", "visual."),
    (r"\.attn\.norm\.", ".attn.inner_attn_ln."),
    (r"\.mlp\.norm\.", ".mlp.ffn_ln."),
    (r"\.mlp\.fc1_g\.", ".mlp.w1."),
    (r"\.mlp\.fc1_x\.", ".mlp.w2."),
    (r"\.attn\.q_proj\.bias$", ".attn.q_bias"),
    (r"\.attn\.v_proj\.bias$", ".attn.v_bias"),
]
def _is_swiglu_block(state: State, key: str) -> bool:
    block = re.match(r"(.*\.blocks\.\d+)\.", key)
    return block is not None and f"{block.group(1)}.mlp.fc1_g.weight" in state


def _split_cross_attention(state: State) -> State:
    """CoCa's cross-attentions (torch nn.MultiheadAttention) -> paddlemix's q_proj + kv_proj (k|v).

    The decoder's have a packed in_proj [3w, w]; the attentional pooler's, whose keys and values
    come from a wider context, separate q/k/v_proj_weight and one packed in_proj_bias.
    """
    out = {}
    for key, value in state.items():
        cross = re.fullmatch(r"(text_decoder\.cross_attn\.\d+\.attn|visual\.attn_pool\.attn)\.(\w+)", key)
        if cross is None:
            out[key] = value
            continue
        module, name = cross.groups()
        if name in ("in_proj_weight", "in_proj_bias"):
            kind = name[len("in_proj_"):]
            width = value.shape[0] // 3
            out[f"{module}.q_proj.{kind}"], out[f"{module}.kv_proj.{kind}"] = value[:width], value[width:]
        elif name == "q_proj_weight":
            out[f"{module}.q_proj.weight"] = value
        elif name == "k_proj_weight":
            out[f"{module}.kv_proj.weight"] = np.concatenate([value, state[f"{module}.v_proj_weight"]], axis=0)
        elif name != "v_proj_weight":
            out[key] = value
    return out


def rename_open_clip(state: State) -> State:
    """open_clip CLIP / CustomTextCLIP / CoCa, with an OpenAI ViT or a timm EVA trunk."""
    state = _split_cross_attention(strip_wrappers(state))
    out = {}
    for key, value in state.items():
        new_key = rename(key, OPEN_CLIP_RENAMES)
        if new_key.startswith(OPEN_CLIP_TEXT_PREFIXES):
            new_key = "text." + new_key
        if new_key.startswith("visual.trunk."):
            if new_key.endswith((".mlp.fc2.weight", ".mlp.fc2.bias")) and _is_swiglu_block(state, key):
                new_key = new_key.replace(".mlp.fc2.", ".mlp.w3.")
            new_key = rename(new_key, TIMM_TO_EVA_RENAMES)
        out[new_key] = value
    return eva_visual_to_paddlemix(out) if "visual.pos_embed" in out else out


