"""transformers' `SiglipModel` (a `save_pretrained` folder, model_type 'siglip') <-> paddlemix CLIP with SigLIP towers.

SiglipModel is SigLIP's two towers as paddlemix builds them: an image ViT without class token or
pre-norm, a patch-embedding bias and the attention-pool head (`vision_model.head`: a probe attending
through a torch nn.MultiheadAttention, then a residual MLP; paddlemix's pool_type 'map'), no projection;
a bidirectional text tower pooling the last position into a Linear with a bias (`text_model.head`);
a logit scale and bias, the scale not clamped. Both towers' MLPs use `hidden_act`, which in Google's
checkpoints is gelu_pytorch_tanh (as big_vision computes it): paddlemix's gelu_approximate 'tanh'.
Block names and the q/k/v packing are those of transformers' CLIPModel (hf.py).

Its text tower masks no padding here (as big_vision and open_clip): transformers' gives the same
features when called without attention_mask.

transformers' Siglip2Model (the NaFlex models, model_type 'siglip2') is refused: its image tower
embeds variable-resolution patch sequences, which paddlemix's fixed-grid tower does not.
"""

import logging
import math
import re
from typing import Any, Dict, List, Tuple

import numpy as np

from ..configuration import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from .common import SCALARS, State, invert_rules, rename, stored_logit_scale
from .hf import HF_BUFFERS, HF_RENAMES, PIL_RESAMPLE, SIGLIP_TYPES, _pack_qkv, _tower, inexpressible_settings

logger = logging.getLogger(__name__)

SIGLIP_TYPE, SIGLIP2_TYPE = SIGLIP_TYPES
# transformers 4.57.6's SiglipTextConfig / SiglipVisionConfig defaults (save_pretrained may leave them out)
SIGLIP_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                            layer_norm_eps=1e-6, projection_size=None)
SIGLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6, vision_use_head=True)
# SiglipImageProcessor's defaults: both sides resized to the size (no crop), bicubic, mean/std 0.5; its
# preprocessor_config.json, where the folder has one, overrides mean, std and resampling (hf.read_hf_folder)
SIGLIP_PREPROCESS = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", resize_mode="squash")
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}  # hidden_act -> gelu_approximate
# paddlemix text_cfg.tokenizer by vocabulary: T5's English SentencePiece (SigLIP), Gemma's (SigLIP 2)
TOKENIZERS_BY_VOCAB = {32000: "siglip", 256000: "siglip2"}
# SiglipModel's initial logit scale and bias are log(1) and 0 (SiglipPreTrainedModel._init_weights);
# paddlemix's configs keep the SigLIP paper's, which open_clip's SigLIP configs use too
PAPER_INIT_LOGIT_SCALE, PAPER_INIT_LOGIT_BIAS = math.log(10), -10.0

# SiglipModel names -> paddlemix: CLIPModel's (blocks, embeddings, final norms), then SigLIP's own. Literal
# rules, read backwards on export (where the head's names must leave before `.attn.out_proj.` would match them).
SIGLIP_RENAMES: List[Tuple[str, str]] = [
    *HF_RENAMES,
    (r"^vision_model\.embeddings\.patch_embedding\.bias$", "visual.conv1.bias"),
    (r"^vision_model\.head\.probe$", "visual.attn_pool.latent"),
    (r"^vision_model\.head\.attention\.q_proj\.", "visual.attn_pool.attn.q_proj."),  # in_proj split: _split_head
    (r"^vision_model\.head\.attention\.kv_proj\.", "visual.attn_pool.attn.kv_proj."),
    (r"^vision_model\.head\.attention\.out_proj\.", "visual.attn_pool.attn.out_proj."),
    (r"^vision_model\.head\.layernorm\.", "visual.attn_pool.norm."),
    (r"^vision_model\.head\.mlp\.", "visual.attn_pool.mlp."),  # fc1/fc2 renamed as the blocks' before
    (r"^text_model\.head\.", "text.text_projection."),
]
PADDLEMIX_TO_SIGLIP = invert_rules(SIGLIP_RENAMES)
HEAD_IN_PROJ = re.compile(r"vision_model\.head\.attention\.in_proj_(weight|bias)")
HEAD_SPLIT = re.compile(r"vision_model\.head\.attention\.(q|kv)_proj\.(weight|bias)")
# what SigLIP's towers set in paddlemix (the rest is read from config.json)
SIGLIP_VISION = dict(class_token=False, pool_type="map", proj_type="none", no_ln_pre=True, patch_bias=True)
SIGLIP_TEXT = dict(no_causal_mask=True, pool_type="last", proj_bias=True)
HF_SIGLIP_VISION_FIELDS = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "norm_eps",
                           "gelu_approximate", *SIGLIP_VISION}
HF_SIGLIP_TEXT_FIELDS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_eps",
                         "gelu_approximate", "tokenizer", *SIGLIP_TEXT}


def _split_head(state: State) -> State:
    """The attention-pool head's torch nn.MultiheadAttention in_proj (q|k|v) -> q_proj and kv_proj (k|v)."""
    out = {}
    for key, value in state.items():
        match = HEAD_IN_PROJ.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        width = value.shape[0] // 3
        out[f"vision_model.head.attention.q_proj.{match.group(1)}"] = value[:width]
        out[f"vision_model.head.attention.kv_proj.{match.group(1)}"] = value[width:]
    return out


def rename_siglip(state: State) -> State:
    """transformers SiglipModel state dict -> paddlemix names (torch layout)."""
    state = _pack_qkv(_split_head({k: v for k, v in state.items() if not HF_BUFFERS.fullmatch(k)}))
    return {rename(key, SIGLIP_RENAMES): value for key, value in state.items()}


def to_hf_siglip(state: State) -> State:
    """paddlemix SigLIP state dict (torch layout) -> transformers SiglipModel's; the inverse of rename_siglip."""
    out, head = {}, {}
    for key, value in state.items():
        hf_key = rename(key, PADDLEMIX_TO_SIGLIP)
        qkv = re.fullmatch(r"(.*)\.self_attn\.qkv\.(weight|bias)", hf_key)
        split = HEAD_SPLIT.fullmatch(hf_key)
        if qkv is not None:
            for name, part in zip("qkv", np.split(value, 3, axis=0)):
                out[f"{qkv.group(1)}.self_attn.{name}_proj.{qkv.group(2)}"] = part
        elif split is not None:
            head[split.groups()] = value
        else:
            out[hf_key] = value.reshape([1]) if key in SCALARS else value  # SiglipModel's are [1], not 0-d
    for kind in ("weight", "bias"):
        if ("q", kind) in head:
            out[f"vision_model.head.attention.in_proj_{kind}"] = np.concatenate([head["q", kind], head["kv", kind]])
    return out


def _tokenizer(vocab_size: int) -> str:
    if vocab_size not in TOKENIZERS_BY_VOCAB:
        logger.warning("text_config.vocab_size %d is neither SigLIP's (%s): text_cfg.tokenizer set to 'siglip'; "
                       "set the model's own in its config.json", vocab_size,
                       ", ".join(f"{n} {v}" for v, n in TOKENIZERS_BY_VOCAB.items()))
    return TOKENIZERS_BY_VOCAB.get(vocab_size, "siglip")


def siglip_config_from_hf(values: Dict[str, Any], where: str) -> CLIPConfig:
    """transformers' SiglipConfig (config.json as a dict) -> paddlemix CLIPConfig, or ValueError naming
    every setting paddlemix cannot express."""
    if values.get("model_type") == SIGLIP2_TYPE:
        raise ValueError(
            f"{where}: model_type 'siglip2' (transformers' Siglip2Model, SigLIP 2's NaFlex variant) does not map "
            "onto paddlemix's image tower: it embeds a variable-resolution sequence of flattened patches (a Linear, "
            "not a convolution over a fixed grid), resizes its position embeddings to each image's grid (bilinear, "
            "antialiased) and masks padded patches; paddlemix's tower takes a fixed square grid. Fixed-resolution "
            "SigLIP 2 checkpoints saved as SiglipModel (model_type 'siglip') do import")
    text = {**SIGLIP_TEXT_DEFAULTS, **(values.get("text_config") or {})}
    vision = {**SIGLIP_VISION_DEFAULTS, **(values.get("vision_config") or {})}
    problems: List[str] = []
    text_width, text_heads, text_ratio = _tower(text, "text_config", problems, GELU_APPROXIMATIONS)
    width, heads, ratio = _tower(vision, "vision_config", problems, GELU_APPROXIMATIONS)
    embed_dim = text["projection_size"] or text_width
    if embed_dim != width:
        problems.append(f"text_config.projection_size {embed_dim} differs from vision_config.hidden_size {width}: "
                        "SiglipModel compares the image tower's pooled output (hidden_size wide) with the text head's")
    if not vision["vision_use_head"]:
        problems.append("vision_config.vision_use_head false: SiglipModel's image embedding is the head's output")
    if vision["num_channels"] != 3:
        problems.append(f"vision_config.num_channels {vision['num_channels']}: paddlemix's image tower takes RGB (3)")
    if problems:
        raise ValueError(f"{where}: cannot be expressed as a paddlemix SigLIP model: " + "; ".join(problems))
    return CLIPConfig(
        embed_dim=embed_dim,
        vision_cfg=VisionConfig(image_size=vision["image_size"], patch_size=vision["patch_size"], width=width,
                                layers=vision["num_hidden_layers"], head_width=width // heads, mlp_ratio=ratio,
                                norm_eps=vision["layer_norm_eps"],
                                gelu_approximate=GELU_APPROXIMATIONS[vision["hidden_act"]], **SIGLIP_VISION),
        text_cfg=TextConfig(context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                            width=text_width, heads=text_heads, layers=text["num_hidden_layers"], mlp_ratio=text_ratio,
                            norm_eps=text["layer_norm_eps"], gelu_approximate=GELU_APPROXIMATIONS[text["hidden_act"]],
                            tokenizer=_tokenizer(text["vocab_size"]), **SIGLIP_TEXT),
        preprocess_cfg=PreprocessConfig(**SIGLIP_PREPROCESS),
        init_logit_scale=PAPER_INIT_LOGIT_SCALE,
        init_logit_bias=PAPER_INIT_LOGIT_BIAS,
        loss="siglip",
    )


def warn_clamped_logit_scale(config: CLIPConfig, state: State) -> None:
    """SiglipModel does not clamp: a logit scale above the model's max_logit_scale gives other logits there."""
    stored = stored_logit_scale(state)
    if stored > config.max_logit_scale:
        logger.warning("logit_scale %.4f exceeds max_logit_scale %.4f, where paddlemix clamps it; SiglipModel does "
                       "not clamp: its logits use %.4f", stored, config.max_logit_scale, stored)


def hf_siglip_config(config: CLIPConfig) -> Dict[str, Any]:
    """paddlemix SigLIP CLIPConfig -> transformers SiglipConfig dict; ValueError naming what SiglipModel
    cannot express."""
    vision, text = config.vision_cfg, config.text_cfg
    problems = inexpressible_settings("vision_cfg", vision, HF_SIGLIP_VISION_FIELDS)
    problems += inexpressible_settings("text_cfg", text, HF_SIGLIP_TEXT_FIELDS)
    problems += [f"vision_cfg.{key}={getattr(vision, key)!r}: SiglipModel's is {value!r}"
                 for key, value in SIGLIP_VISION.items() if getattr(vision, key) != value]
    problems += [f"text_cfg.{key}={getattr(text, key)!r}: SiglipModel's is {value!r}"
                 for key, value in SIGLIP_TEXT.items() if getattr(text, key) != value]
    if config.quick_gelu:
        problems.append("quick_gelu=true: SiglipModel's MLPs use GELU")
    image_size = vision.image_size
    if not isinstance(image_size, int):
        if len(set(image_size)) != 1:
            problems.append(f"vision_cfg.image_size={list(image_size)}: SiglipModel's images are square")
        image_size = image_size[0]
    if problems:
        raise ValueError("transformers' SiglipModel cannot express " + ", ".join(problems))
    acts = {name: act for act, name in GELU_APPROXIMATIONS.items()}
    return {
        "architectures": ["SiglipModel"],
        "model_type": SIGLIP_TYPE,
        "text_config": {
            "vocab_size": text.vocab_size, "hidden_size": text.width, "intermediate_size": int(text.width * text.mlp_ratio),
            "num_hidden_layers": text.layers, "num_attention_heads": text.heads,
            "max_position_embeddings": text.context_length, "hidden_act": acts[text.gelu_approximate],
            "layer_norm_eps": text.norm_eps, "projection_size": config.embed_dim,
        },
        "vision_config": {
            "hidden_size": vision.width, "intermediate_size": int(vision.width * vision.mlp_ratio),
            "num_hidden_layers": vision.layers, "num_attention_heads": vision.heads, "num_channels": 3,
            "image_size": image_size, "patch_size": vision.patch_size, "hidden_act": acts[vision.gelu_approximate],
            "layer_norm_eps": vision.norm_eps,
        },
    }


def hf_siglip_preprocessor(config: CLIPConfig) -> Dict[str, Any]:
    """SiglipImageProcessor's preprocessor_config.json for a paddlemix SigLIP model."""
    preprocess, size = config.preprocess_cfg, config.vision_cfg.image_size
    side = size if isinstance(size, int) else size[0]
    if preprocess.resize_mode != "squash":
        logger.warning("preprocess_cfg.resize_mode=%r: SiglipImageProcessor resizes both sides to the size (squash); "
                       "preprocessor_config.json says so", preprocess.resize_mode)
    return {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": side, "width": side},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "image_mean": list(preprocess.mean), "image_std": list(preprocess.std),
            "resample": PIL_RESAMPLE[preprocess.interpolation]}
