"""Foreign checkpoint layouts -> paddlemix state dicts (numpy arrays, paddlemix names and layout).

Each source renames keys to paddlemix's names (keeping torch's [out, in] Linear layout); one
shared step then moves Linear weights to Paddle's [in, out] layout. EVA vision towers have three
spellings: the EVA-CLIP repository's (`visual.blocks.N.mlp.w1`, `attn.inner_attn_ln`, ...),
timm's inside open_clip (`visual.trunk.blocks.N.mlp.fc1_g`, `attn.norm`, ...) and PaddleMIX's
(EVA-CLIP's names in Paddle's layout, q/k/v as separate projections); the other two are first
brought to EVA-CLIP's, so one table maps EVA towers to paddlemix.
"""

import re
from typing import Callable, Dict, List, Tuple

import numpy as np

State = Dict[str, np.ndarray]

# Buffers the models rebuild themselves; checkpoints may carry them.
REBUILT_BUFFERS = re.compile(r"(?:visual\.|text\.|text_decoder\.)?attn_mask|visual\.(?:trunk\.)?rope\..*")
# Keys of 2-D tensors that are not torch Linear weights (kept as they are).
NOT_LINEAR = {"text.token_embedding.weight"}

# open_clip's CLIP keeps its text modules at the top level; paddlemix nests them in `text.`
# (open_clip's CustomTextCLIP, used for EVA, already does).
OPEN_CLIP_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
OPEN_CLIP_RENAMES: List[Tuple[str, str]] = [
    (r"(.*resblocks\.\d+\.attn)\.in_proj_weight", r"\1.qkv.weight"),  # MultiheadAttention's packed q|k|v
    (r"(.*resblocks\.\d+\.attn)\.in_proj_bias", r"\1.qkv.bias"),
]

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
    (r"^visual\.(?:fc_)?norm\.", "visual.ln_post."),
    (r"^visual\.head\.bias$", "visual.proj_bias"),
]


def _rename(key: str, rules: List[Tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _strip_wrappers(state: State) -> State:
    """Drop `module.` (DDP) prefixes and the buffers the model rebuilds."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not REBUILT_BUFFERS.fullmatch(key):
            out[key] = value
    return out


def _eva_visual_to_paddlemix(state: State) -> State:
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
            out[_rename(f"{block}.qkv.weight", EVA_RENAMES)] = packed
        else:
            value = value.reshape(value.shape[-1]) if key == "visual.cls_token" else value
            value = value.reshape(value.shape[-2:]) if key == "visual.pos_embed" else value
            out[_rename(key, EVA_RENAMES)] = value
    return out


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
    state = _split_cross_attention(_strip_wrappers(state))
    out = {}
    for key, value in state.items():
        new_key = _rename(key, OPEN_CLIP_RENAMES)
        if new_key.startswith(OPEN_CLIP_TEXT_PREFIXES):
            new_key = "text." + new_key
        if new_key.startswith("visual.trunk."):
            if new_key.endswith((".mlp.fc2.weight", ".mlp.fc2.bias")) and _is_swiglu_block(state, key):
                new_key = new_key.replace(".mlp.fc2.", ".mlp.w3.")
            new_key = _rename(new_key, TIMM_TO_EVA_RENAMES)
        out[new_key] = value
    return _eva_visual_to_paddlemix(out) if "visual.pos_embed" in out else out


def rename_eva_clip(state: State) -> State:
    """The EVA-CLIP repository's checkpoints (torch): EVA vision tower + open_clip text tower."""
    state = _strip_wrappers(state)
    return _eva_visual_to_paddlemix({_rename(k, OPEN_CLIP_RENAMES): v for k, v in state.items()})


def torch_to_paddle_layout(state: State) -> State:
    """Transpose torch Linear weights ([out, in]) to Paddle's [in, out]; logit_scale (0-d in open_clip) to [1]."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and key not in NOT_LINEAR:
            value = value.T
        if key == "logit_scale" and value.size == 1:
            value = value.reshape([1])
        out[key] = np.array(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def _is_paddle_linear(key: str, value: np.ndarray) -> bool:
    return (key.endswith(".weight") and value.ndim == 2 and key not in NOT_LINEAR) or key.endswith(".in_proj_weight")


def rename_paddlemix(state: State) -> State:
    """PaddleMIX's EVA-CLIP `model_state.pdparams`: EVA-CLIP names, Paddle [in, out] Linear weights,
    q/k/v as separate projections (`q_proj.bias`/`v_proj.bias` are EVA's q_bias/v_bias; the text
    tower's q/k/v/out_proj are open_clip's packed in_proj + out_proj)."""
    state = _strip_wrappers(state)
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
            key = _rename(key, [(r"\.attn\.q_proj\.bias$", ".attn.q_bias"), (r"\.attn\.v_proj\.bias$", ".attn.v_bias")])
        out[key] = value
    return rename_eva_clip(out)


SOURCES: Dict[str, Callable[[State], State]] = {
    "open_clip": rename_open_clip,
    "eva_clip": rename_eva_clip,
    "paddlemix": rename_paddlemix,
}


def convert_state(source: str, state: State) -> State:
    """`source` checkpoint (numpy) -> paddlemix state dict in Paddle layout."""
    if source not in SOURCES:
        raise ValueError(f"--source {source!r} is not supported; choose from {', '.join(sorted(SOURCES))}")
    return torch_to_paddle_layout(SOURCES[source](state))
