"""open_clip checkpoints: CLIP / CustomTextCLIP / CoCa, with an OpenAI ViT or a timm EVA or SigLIP ViT trunk.

timm's SigLIP VisionTransformer names its modules as timm's Eva does (patch_embed, pos_embed, blocks.N
with norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm), so both trunks go through the
EVA mapping; its attention-pool head (`attn_pool.*`) has its own rules here.
"""

import re
from typing import List, Optional, Tuple

import numpy as np

from .common import State, invert_rules, rename, strip_wrappers
from .eva_clip import eva_visual_to_paddlemix, paddlemix_visual_to_eva
from .open_clip_names import OPEN_CLIP_RENAMES, OPEN_CLIP_TEXT_PREFIXES

# timm Eva (open_clip's `visual.trunk.`) -> EVA-CLIP repository names, the inverse of
# timm.models.eva.checkpoint_filter_fn. `mlp.fc2` is SwiGLU's `w3` only where `mlp.fc1_g` exists.
TIMM_TO_EVA_RENAMES: List[Tuple[str, str]] = [
    (r"visual\.trunk\.", "visual."),
    (r"\.attn\.norm\.", ".attn.inner_attn_ln."),
    (r"\.mlp\.norm\.", ".mlp.ffn_ln."),
    (r"\.mlp\.fc1_g\.", ".mlp.w1."),
    (r"\.mlp\.fc1_x\.", ".mlp.w2."),
]
# timm's unfused q/k/v (EVA02) keep their q/v biases in the projections; fused qkv (EVA01) as q_bias/v_bias.
TIMM_UNFUSED_BIAS_RENAMES: List[Tuple[str, str]] = [
    (r"\.attn\.q_proj\.bias$", ".attn.q_bias"),
    (r"\.attn\.v_proj\.bias$", ".attn.v_bias"),
]
# timm's AttentionPoolLatent (SigLIP's 'map' head, after the trunk renames) -> paddlemix's, whose q / kv /
# proj Linears are a CrossAttention's. Applied after eva_visual_to_paddlemix, which would take a
# `.attn.q_proj.weight` for an EVA02 block's.
TIMM_ATTN_POOL_RENAMES: List[Tuple[str, str]] = [
    (r"^visual\.attn_pool\.q\.", "visual.attn_pool.attn.q_proj."),
    (r"^visual\.attn_pool\.kv\.", "visual.attn_pool.attn.kv_proj."),
    (r"^visual\.attn_pool\.proj\.", "visual.attn_pool.attn.out_proj."),
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
    """open_clip CLIP / CustomTextCLIP / CoCa, with an OpenAI ViT or a timm EVA or SigLIP ViT trunk."""
    state = _split_cross_attention(strip_wrappers(state))
    out = {}
    for key, value in state.items():
        new_key = rename(key, OPEN_CLIP_RENAMES)
        if new_key.startswith(OPEN_CLIP_TEXT_PREFIXES):
            new_key = "text." + new_key
        if new_key.startswith("visual.trunk."):
            if new_key.endswith((".mlp.fc2.weight", ".mlp.fc2.bias")) and _is_swiglu_block(state, key):
                new_key = new_key.replace(".mlp.fc2.", ".mlp.w3.")
            new_key = rename(new_key, TIMM_TO_EVA_RENAMES + TIMM_UNFUSED_BIAS_RENAMES)
        out[new_key] = value
    if "visual.pos_embed" not in out:
        return out
    return {rename(key, TIMM_ATTN_POOL_RENAMES): value for key, value in eva_visual_to_paddlemix(out).items()}


def _pack_cross_attention(state: State) -> State:
    """paddlemix's q_proj + kv_proj -> torch nn.MultiheadAttention's; the inverse of _split_cross_attention."""
    out = {}
    for key, value in state.items():
        cross = re.fullmatch(r"(text_decoder\.cross_attn\.\d+\.attn|visual\.attn_pool\.attn)\.(q_proj|kv_proj)\.(\w+)", key)
        if cross is None:
            out[key] = value
            continue
        module, projection, kind = cross.groups()
        if projection == "kv_proj":
            continue  # packed with q_proj
        kv = state[f"{module}.kv_proj.{kind}"]
        if kind == "bias" or value.shape[1] == kv.shape[1]:  # keys and values as wide as the queries: packed
            out[f"{module}.in_proj_{kind}"] = np.concatenate([value, kv], axis=0)
        else:
            out[f"{module}.q_proj_weight"] = value
            out[f"{module}.k_proj_weight"], out[f"{module}.v_proj_weight"] = np.split(kv, 2, axis=0)
    return out


PADDLEMIX_TO_OPEN_CLIP = invert_rules(OPEN_CLIP_RENAMES)
EVA_TO_TIMM = invert_rules(TIMM_TO_EVA_RENAMES)
UNFUSED_BIAS_TO_TIMM = invert_rules(TIMM_UNFUSED_BIAS_RENAMES)
ATTN_POOL_TO_TIMM = invert_rules(TIMM_ATTN_POOL_RENAMES)


def to_open_clip(state: State, text_at_top: bool, eva_trunk: Optional[Tuple[bool, str]] = None) -> State:
    """paddlemix state dict (torch layout) -> open_clip's; the inverse of rename_open_clip.

    text_at_top: open_clip's CLIP (not CustomTextCLIP / CoCa) keeps the text modules at the top level.
    eva_trunk: for a timm Eva or SigLIP ViT image tower, (fused q/k/v?, timm's final norm: 'norm' or 'fc_norm').
    """
    if eva_trunk is not None:
        fused, pool_norm = eva_trunk
        state = {rename(key, ATTN_POOL_TO_TIMM): value for key, value in state.items()}
        state = paddlemix_visual_to_eva(state, fused, pool_norm)
    out = {}
    for key, value in _pack_cross_attention(state).items():
        if eva_trunk is not None and key.startswith("visual."):
            key = rename(key, EVA_TO_TIMM if fused else EVA_TO_TIMM + UNFUSED_BIAS_TO_TIMM)
            if re.fullmatch(r"visual\.trunk\.blocks\.\d+\.mlp\.w3\.(weight|bias)", key):
                key = key.replace(".mlp.w3.", ".mlp.fc2.")  # SwiGLU's output projection
        key = rename(key, PADDLEMIX_TO_OPEN_CLIP)
        if text_at_top and key.startswith("text.") and key[len("text."):].startswith(OPEN_CLIP_TEXT_PREFIXES):
            key = key[len("text."):]
        out[key] = value
    return out

