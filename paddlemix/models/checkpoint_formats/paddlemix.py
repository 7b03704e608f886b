"""PaddleMIX's model directories: `config.json` (its CLIPConfig / EVACLIPConfig / CoCaConfig) and
`model_state.pdparams` (Paddle [in, out] Linear weights, q/k/v as separate projections).

As PaddleMIX's `paddlemix/models/clip/` builds them (checked against checkpoints written by that code,
tests/fixtures/make_paddlemix_fixtures.py):
  - CLIP (`custom_text` false, its default) keeps the text modules at the top level, as open_clip does;
    EVA-CLIP and CoCa nest them in `text.`.
  - Every attention stores `q_proj`, `k_proj`, `v_proj` (+ biases) and `out_proj`; EVA vision blocks
    store EVA-CLIP's names with `q_proj.bias`/`v_proj.bias` for EVA's q_bias/v_bias (`qv_proj` when
    built with `fuse_qv`).
The weights are first brought to open_clip's torch layout (packed `in_proj` for self- and
cross-attention, separate q/k/v_proj_weight for the attentional pooler, whose keys are wider), so
that open_clip's mapping does the rest.

Where PaddleMIX computes differently from the reference that trained the weights, paddlemix follows
the reference: EVA's attention sub-LN (`inner_attn_ln`) uses eps 1e-6 as EVA-CLIP does (PaddleMIX
builds it with Paddle's default 1e-5), and CLIP's `quick_gelu` applies to both towers as in
open_clip (PaddleMIX's CLIP vision tower always runs exact GELU).
"""

import logging
import re
from typing import Any, Dict, List

import numpy as np

from .common import State, strip_wrappers
from .open_clip import rename_open_clip

logger = logging.getLogger(__name__)

ATTENTION = re.compile(r"(.*)\.(q|k|v|qv)_proj\.(weight|bias)")
EVA_VISION_BLOCK = re.compile(r"visual\.blocks\.\d+\.attn")
ATTENTIONAL_POOLER = "visual.attn_pool.attn"

# ---- config.json ------------------------------------------------------------------------------------
# PaddleMIX tower keys that change nothing in the architecture (runtime, parallelism, outputs).
RUNTIME_KEYS = {"embed_dim", "output_tokens", "fusedLN", "fusedlinear", "flash_attn", "fuse_qv",
                "enable_recompute", "attn_mask", "cast_dtype", "token_feats", "drop_rate", "attn_drop_rate", "init_scale",
                "in_chans", "return_dict", "model_type", "architectures", "dtype"}
VISION_KEYS = {"image_size": "image_size", "patch_size": "patch_size", "width": "width", "layers": "layers",
               "head_width": "head_width", "mlp_ratio": "mlp_ratio", "ls_init_value": "ls_init_value",
               "patch_dropout": "patch_dropout", "attentional_pool": "attentional_pool",
               "n_queries": "attn_pooler_queries", "attn_pooler_heads": "attn_pooler_heads", "xattn": "xattn"}
EVA_VISION_KEYS = {"init_values": "ls_init_value", "drop_path_rate": "drop_path_rate", "rope": "rope",
                   "postnorm": "postnorm", "pt_hw_seq_len": "pt_hw_seq_len", "intp_freq": "intp_freq",
                   "naiveswiglu": "naiveswiglu", "subln": "subln"}
TEXT_KEYS = {"context_length": "context_length", "vocab_size": "vocab_size", "width": "width", "heads": "heads",
             "layers": "layers", "mlp_ratio": "mlp_ratio", "ls_init_value": "ls_init_value", "xattn": "xattn",
             "pad_id": "pad_id", "embed_cls": "embed_cls"}
MULTIMODAL_KEYS = {"context_length": "context_length", "vocab_size": "vocab_size", "width": "width",
                   "heads": "heads", "layers": "layers", "mlp_ratio": "mlp_ratio", "ls_init_value": "ls_init_value"}
# EVA options of PaddleMIX's EVAVisionTransformerConfig that paddlemix's EVA tower has fixed, with
# the value it supports (EVA-CLIP's released models all use these).
EVA_FIXED = {"use_abs_pos_emb": True, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": False,
             "qk_scale": None}


def is_paddlemix_config(values: Dict[str, Any]) -> bool:
    """PaddleMIX's config.json, as opposed to paddlemix's or open_clip's (which share `custom_text`):
    PaddleNLP's PretrainedConfig fields, or PaddleMIX's own vision-tower names (`n_queries`, EVA's
    `qkv_bias` / `use_mean_pooling`)."""
    vision = values.get("vision_cfg", {})
    return (
        "architectures" in values or "vision_config" in values
        or any(key in vision for key in ("n_queries", "qkv_bias", "use_mean_pooling", "global_average_pool"))
    )


def _translate(section: Dict[str, Any], table: Dict[str, str], where: str, out: Dict[str, Any]) -> List[str]:
    """Copy `section` through `table` into `out`; the keys it neither maps nor ignores."""
    unknown = []
    for key, value in section.items():
        if key in table:
            out[table[key]] = value
        elif key not in RUNTIME_KEYS:
            unknown.append(key)
    return unknown


def config_from_paddlemix(values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A PaddleMIX config.json (dict) -> paddlemix's config dict (model_type, embed_dim, towers)."""
    model_type = values.get("model_type", "clip")
    if model_type not in ("clip", "evaclip", "coca"):
        raise ValueError(f"{where}: PaddleMIX model_type {model_type!r} is not a CLIP-family model")
    vision_in, text_in = dict(values.get("vision_cfg", {})), dict(values.get("text_cfg", {}))
    embed_dim = values.get("embed_dim") or vision_in.get("embed_dim") or text_in.get("embed_dim")
    vision, text, unknown = {}, {}, {}
    if model_type == "evaclip":
        for key, expected in EVA_FIXED.items():
            if vision_in.pop(key, expected) != expected:
                raise ValueError(f"{where}: vision_cfg.{key} other than {expected!r} is not supported by paddlemix's EVA tower")
        if vision_in.get("subln") and not vision_in.get("inner_attn_ln", True):
            raise ValueError(f"{where}: vision_cfg.subln without inner_attn_ln is not supported by paddlemix's EVA tower")
        vision_in.pop("inner_attn_ln", None)  # without subln there is no sub-LN either way
        vision.update(no_ln_pre=True, patch_bias=True, proj_bias=True, norm_eps=1e-6)
        vision["attn_bias"] = "qv" if vision_in.pop("qkv_bias", False) else "none"
        if vision_in.pop("use_mean_pooling", True):
            vision.update(pool_type="avg", final_ln_after_pool=True)
        unknown["vision_cfg"] = _translate(vision_in, {**VISION_KEYS, **EVA_VISION_KEYS}, where, vision)
    else:
        if vision_in.pop("global_average_pool", False):
            vision["pool_type"] = "avg"
        unknown["vision_cfg"] = _translate(vision_in, VISION_KEYS, where, vision)
    quick_gelu = bool(text_in.pop("quick_gelu", False))
    unknown["text_cfg"] = _translate(text_in, TEXT_KEYS, where, text)
    config = {"model_type": model_type, "embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text,
              "quick_gelu": quick_gelu}
    if model_type == "coca":
        multimodal_in = dict(values.get("multimodal_cfg", {}))
        quick_gelu = quick_gelu or bool(multimodal_in.pop("quick_gelu", False))
        config["multimodal_cfg"] = {}
        unknown["multimodal_cfg"] = _translate(multimodal_in, MULTIMODAL_KEYS, where, config["multimodal_cfg"])
    offending = [f"{section}.{key}" for section, keys in unknown.items() for key in keys]
    if offending:
        raise ValueError(f"{where}: PaddleMIX config keys paddlemix cannot express: {', '.join(offending)}")
    if quick_gelu and model_type == "clip":
        logger.warning("%s: quick_gelu applies to both towers here, as in open_clip; PaddleMIX's CLIP runs its "
                       "vision tower with exact GELU whatever this says", where)
    return config


# ---- model_state.pdparams ---------------------------------------------------------------------------
def _is_paddle_linear(key: str, value: np.ndarray) -> bool:
    return key.endswith(".weight") and value.ndim == 2 and not key.endswith("token_embedding.weight")


def _pack_attention(state: State) -> State:
    """Separate q/k/v projections (torch layout) -> open_clip's: EVA vision blocks keep EVA-CLIP's
    q/k/v_proj weights with q_bias/v_bias; the attentional pooler gets q/k/v_proj_weight + in_proj_bias;
    every other attention a packed in_proj_weight / in_proj_bias."""
    out = {}
    for key, value in state.items():
        match = ATTENTION.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        module, projection, kind = match.groups()
        if projection == "qv":  # fuse_qv: q and v stacked along the output
            q, v = np.split(value, 2, axis=0)
            parts = {"q": q, "v": v}
        else:
            parts = {projection: value}
        for name, part in parts.items():
            if EVA_VISION_BLOCK.fullmatch(module):
                out[f"{module}.{name}_bias" if kind == "bias" else f"{module}.{name}_proj.weight"] = part
            elif module == ATTENTIONAL_POOLER and kind == "weight":
                out[f"{module}.{name}_proj_weight"] = part
            else:
                out.setdefault(f"{module}.in_proj_{kind}", {})[name] = part
    for key, value in list(out.items()):
        if isinstance(value, dict):  # q, k, v pieces of one packed projection
            if set(value) != {"q", "k", "v"}:
                del out[key]  # incomplete: the key check reports the module's keys as missing
                continue
            out[key] = np.concatenate([value[name] for name in "qkv"], axis=0)
    return out


def rename_paddlemix(state: State) -> State:
    """PaddleMIX's CLIP / EVA-CLIP / CoCa `model_state.pdparams` -> paddlemix names (torch layout)."""
    state = strip_wrappers(state)
    torch_layout = {k: (v.T if _is_paddle_linear(k, v) else v) for k, v in state.items()}
    return rename_open_clip(_pack_attention(torch_layout))
