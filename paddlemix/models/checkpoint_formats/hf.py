"""transformers' `CLIPModel` (a `save_pretrained` folder: config.json + model.safetensors) <-> paddlemix CLIP.

Key names are one table of literal renames, read forwards on import and backwards (`invert_rules`)
on export. transformers keeps q/k/v as three Linear layers (packed into paddlemix's `qkv` here and
split back on export) and both projections as Linear layers (paddlemix's are [width, embed]
matrices). The architecture is transformers' `CLIPConfig`: `clip_config_from_hf` reads it and
`hf_config_from_clip` writes it, each refusing, with the reason, what the other side cannot express.
A VisionTextDualEncoderModel folder (a CLIP vision tower with a BERT-family text model) is read by
hf_dual_encoder, which builds on this module's vision tower mapping.
"""

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ..configuration import CLIPConfig, TextConfig, VisionConfig
from .common import State, invert_rules, rename, strip_wrappers

logger = logging.getLogger(__name__)

HF_RENAMES: List[Tuple[str, str]] = [
    (r"^text_model\.embeddings\.token_embedding\.weight$", "text.token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "text.positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "text.transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "text.ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: transformers' spelling
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.self_attn\.qkv\.", ".attn.qkv."),  # q_proj | k_proj | v_proj, packed by _pack_qkv
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"^visual_projection\.weight$", "visual.proj"),
    (r"^text_projection\.weight$", "text.text_projection"),
]
PADDLEMIX_TO_HF = invert_rules(HF_RENAMES)
# Linear layers in transformers, [width, embed] matrices in paddlemix (open_clip's layout).
PROJECTIONS = ("visual.proj", "text.text_projection")
# Buffers transformers rebuilds (written by versions before 4.31).
HF_BUFFERS = re.compile(r"(?:text|vision)_model\.embeddings\.position_ids")
QKV = re.compile(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)")
DUAL_ENCODER_TYPE = "vision-text-dual-encoder"
DUAL_ENCODER_TEXT_KEY = "text_model.embeddings.word_embeddings.weight"  # a BERT-family text model (CLIP's: token_embedding)
SIGLIP_TYPES = ("siglip", "siglip2")  # SiglipModel (hf_siglip); Siglip2Model, which hf_siglip refuses
SIGLIP_KEY = "vision_model.head.probe"  # SiglipModel's attention-pool head (CLIPModel has none)

# transformers 4.57.6's CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults: save_pretrained
# may leave out a value equal to them.
HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                        layer_norm_eps=1e-5, eos_token_id=49407)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
HF_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)
# transformers' pooling before its PR #24773: eos_token_id 2 in a config means "argmax of the ids".
HF_LEGACY_ARGMAX_EOS = 2
# paddlemix's (and open_clip's) text tower has no epsilon option: its LayerNorms use this one.
TEXT_NORM_EPS = 1e-5
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> CLIPConfig.quick_gelu
PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling codes, as preprocessor_config.json stores them
# Options that change no weight and no inference result (kernels), and training-only regularisers:
# exported formats have no place for them, so exports leave them behind.
RUNTIME_OPTIONS = {"xattn"}
TRAINING_OPTIONS = {"patch_dropout", "drop_path_rate"}
HF_VISION_FIELDS = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "norm_eps"}
HF_TEXT_FIELDS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id"}


def _pack_qkv(state: State) -> State:
    out = {}
    for key, value in state.items():
        match = QKV.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        block, projection, kind = match.groups()
        parts = [state.get(f"{block}.self_attn.{n}_proj.{kind}") for n in "qkv"]
        if any(part is None for part in parts):  # incomplete: left for the key check to report
            out[key] = value
        elif projection == "q":
            out[f"{block}.self_attn.qkv.{kind}"] = np.concatenate(parts, axis=0)
    return out


def rename_hf(state: State) -> State:
    """transformers CLIPModel, SiglipModel or VisionTextDualEncoderModel state dict -> paddlemix names
    (torch layout)."""
    state = strip_wrappers(state)
    if SIGLIP_KEY in state:
        from .hf_siglip import rename_siglip  # (hf_siglip builds on this module)

        return rename_siglip(state)
    if DUAL_ENCODER_TEXT_KEY in state:
        from .hf_dual_encoder import rename_dual_encoder  # (hf_dual_encoder builds on this module)

        return rename_dual_encoder(state)
    return rename_clip(state)


def rename_clip(state: State) -> State:
    """transformers CLIPModel state dict (or its vision part) -> paddlemix names (torch layout)."""
    state = _pack_qkv({k: v for k, v in state.items() if not HF_BUFFERS.fullmatch(k)})
    out = {}
    for key, value in state.items():
        new_key = rename(key, HF_RENAMES)
        out[new_key] = value.T if new_key in PROJECTIONS else value
    return out


def to_hf(state: State) -> State:
    """paddlemix CLIP state dict (torch layout) -> transformers CLIPModel's; the inverse of rename_hf."""
    out = {}
    for key, value in state.items():
        hf_key = rename(key, PADDLEMIX_TO_HF)
        value = value.T if key in PROJECTIONS else value
        qkv = re.fullmatch(r"(.*)\.self_attn\.qkv\.(weight|bias)", hf_key)
        if qkv is None:
            out[hf_key] = value
            continue
        for name, part in zip("qkv", np.split(value, 3, axis=0)):
            out[f"{qkv.group(1)}.self_attn.{name}_proj.{qkv.group(2)}"] = part
    return out


def _tower(values: Dict[str, Any], where: str, problems: List[str],
           activations: Dict[str, Any] = ACTIVATIONS) -> Tuple[int, int, float]:
    """(width, heads, mlp_ratio) of a transformers tower config whose hidden_act must be one of `activations`;
    what paddlemix cannot hold goes to `problems`."""
    width, heads, hidden = values["hidden_size"], values["num_attention_heads"], values["intermediate_size"]
    if width % heads:
        problems.append(f"{where}.hidden_size {width} is not a multiple of num_attention_heads {heads}")
    ratio = hidden / width
    if int(width * ratio) != hidden:
        problems.append(f"{where}.intermediate_size {hidden} is not int(hidden_size x a ratio) for hidden_size {width}")
    if values["hidden_act"] not in activations:
        problems.append(f"{where}.hidden_act {values['hidden_act']!r}: paddlemix's MLPs use {' or '.join(activations)}")
    return width, heads, ratio


def vision_cfg_from_hf(values: Dict[str, Any], where: str, problems: List[str]) -> Tuple[VisionConfig, str]:
    """transformers' CLIPVisionConfig (dict) -> (paddlemix VisionConfig, its hidden_act); what paddlemix
    cannot hold goes to `problems`."""
    vision = {**HF_VISION_DEFAULTS, **values}
    width, heads, ratio = _tower(vision, where, problems)
    if vision["num_channels"] != 3:
        problems.append(f"{where}.num_channels {vision['num_channels']}: paddlemix's image tower takes RGB (3)")
    return VisionConfig(image_size=vision["image_size"], patch_size=vision["patch_size"], width=width,
                        layers=vision["num_hidden_layers"], head_width=width // heads, mlp_ratio=ratio,
                        norm_eps=vision["layer_norm_eps"]), vision["hidden_act"]


def clip_config_from_hf(values: Dict[str, Any], where: str) -> CLIPConfig:
    """transformers' CLIPConfig (config.json as a dict) -> paddlemix CLIPConfig, or ValueError naming
    every setting paddlemix's CLIP cannot express."""
    if values.get("model_type", "clip") != "clip":
        raise ValueError(f"{where}: model_type {values.get('model_type')!r}; only a transformers CLIPModel "
                         f"(model_type 'clip'), SiglipModel ('siglip') or VisionTextDualEncoderModel "
                         f"({DUAL_ENCODER_TYPE!r}) maps to a paddlemix CLIP")
    text = {**HF_TEXT_DEFAULTS, **(values.get("text_config") or values.get("text_config_dict") or {})}
    top = {**HF_DEFAULTS, **values}
    problems: List[str] = []
    text_width, text_heads, text_ratio = _tower(text, "text_config", problems)
    vision_cfg, vision_act = vision_cfg_from_hf(values.get("vision_config") or values.get("vision_config_dict") or {},
                                                "vision_config", problems)
    if text["hidden_act"] != vision_act:
        problems.append(f"text_config.hidden_act {text['hidden_act']!r} differs from vision_config.hidden_act "
                        f"{vision_act!r}: paddlemix's quick_gelu is one setting for both towers")
    if text["layer_norm_eps"] != TEXT_NORM_EPS:
        problems.append(f"text_config.layer_norm_eps {text['layer_norm_eps']}: paddlemix's text tower uses {TEXT_NORM_EPS}")
    if text["eos_token_id"] not in (HF_LEGACY_ARGMAX_EOS, text["vocab_size"] - 1):
        problems.append(f"text_config.eos_token_id {text['eos_token_id']}: transformers pools the first token of that "
                        f"id, paddlemix the largest id, which agree only for eos_token_id {HF_LEGACY_ARGMAX_EOS} "
                        f"(argmax) or vocab_size - 1 ({text['vocab_size'] - 1})")
    if problems:
        raise ValueError(f"{where}: cannot be expressed as a paddlemix CLIP: " + "; ".join(problems))
    return CLIPConfig(
        embed_dim=top["projection_dim"],
        vision_cfg=vision_cfg,
        text_cfg=TextConfig(context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                            width=text_width, heads=text_heads, layers=text["num_hidden_layers"], mlp_ratio=text_ratio),
        quick_gelu=ACTIVATIONS[text["hidden_act"]],
        init_logit_scale=top["logit_scale_init_value"],
    )


def inexpressible_settings(section: str, tower: object, allowed: set) -> List[str]:
    """Settings of `tower` (a config dataclass) that differ from its defaults outside `allowed`, as
    'section.name=value'; training-only ones are logged and left behind instead."""
    defaults = type(tower)()
    found = []
    for item in dataclasses.fields(tower):
        value = getattr(tower, item.name)
        if item.name in set(allowed) | RUNTIME_OPTIONS or value == getattr(defaults, item.name):
            continue
        if item.name in TRAINING_OPTIONS:
            logger.warning("%s.%s=%r is a training setting the export cannot hold: not exported",
                           section, item.name, value)
        else:
            found.append(f"{section}.{item.name}={value!r}")
    return found


def hf_vision_config(config: CLIPConfig, problems: List[str]) -> Dict[str, Any]:
    """transformers' CLIPVisionConfig (dict) of a paddlemix CLIP's image tower; what it cannot express
    goes to `problems`."""
    vision = config.vision_cfg
    problems += inexpressible_settings("vision_cfg", vision, HF_VISION_FIELDS)
    image_size = vision.image_size
    if not isinstance(image_size, int):
        if len(set(image_size)) != 1:
            problems.append(f"vision_cfg.image_size={list(image_size)}: CLIPModel's images are square")
        image_size = image_size[0]
    if vision.width % vision.head_width:
        problems.append(f"vision_cfg.width {vision.width} is not a multiple of head_width {vision.head_width}")
    return {
        "hidden_size": vision.width, "intermediate_size": int(vision.width * vision.mlp_ratio),
        "num_hidden_layers": vision.layers, "num_attention_heads": vision.heads, "projection_dim": config.embed_dim,
        "num_channels": 3, "image_size": image_size, "patch_size": vision.patch_size,
        "hidden_act": "quick_gelu" if config.quick_gelu else "gelu", "layer_norm_eps": vision.norm_eps,
    }


def warn_unclamped_logit_scale(config: CLIPConfig) -> None:
    if not math.isclose(config.max_logit_scale, math.log(100)):
        logger.warning("max_logit_scale=%s: transformers does not clamp logit_scale; not exported", config.max_logit_scale)


def hf_config_from_clip(config: CLIPConfig) -> Dict[str, Any]:
    """paddlemix CLIPConfig -> transformers CLIPConfig dict; ValueError naming what CLIPModel cannot express."""
    if config.model_type != "clip":
        raise ValueError(f"a {config.model_type} model has no transformers CLIPModel form (CLIPModel is OpenAI's "
                         "ViT + text transformer: no EVA block options, no CoCa pooler or decoder); "
                         "export it with --to open_clip")
    text = config.text_cfg
    problems: List[str] = []
    vision_config = hf_vision_config(config, problems)
    problems += inexpressible_settings("text_cfg", text, HF_TEXT_FIELDS)
    if problems:
        raise ValueError("transformers' CLIPModel cannot express " + ", ".join(problems))
    warn_unclamped_logit_scale(config)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "text_config": {
            "vocab_size": text.vocab_size, "hidden_size": text.width, "intermediate_size": int(text.width * text.mlp_ratio),
            "num_hidden_layers": text.layers, "num_attention_heads": text.heads, "projection_dim": config.embed_dim,
            "max_position_embeddings": text.context_length, "hidden_act": vision_config["hidden_act"],
            "layer_norm_eps": TEXT_NORM_EPS,
            # end of text is the largest id, so transformers' first-eos pooling is paddlemix's argmax
            "bos_token_id": text.vocab_size - 2, "eos_token_id": text.vocab_size - 1, "pad_token_id": text.pad_id,
        },
        "vision_config": vision_config,
    }


def read_hf_folder(directory: Path) -> Tuple[CLIPConfig, State]:
    """A transformers `save_pretrained` folder of a CLIPModel, SiglipModel or VisionTextDualEncoderModel ->
    (paddlemix config, its state dict as saved)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--checkpoint {directory}: no config.json; give a transformers save_pretrained folder")
    values = json.loads(config_path.read_text())
    if values.get("model_type") == DUAL_ENCODER_TYPE:
        from .hf_dual_encoder import dual_encoder_config_from_hf  # (hf_dual_encoder builds on this module)

        config = dual_encoder_config_from_hf(values, where=str(config_path))
    elif values.get("model_type") in SIGLIP_TYPES:
        from .hf_siglip import siglip_config_from_hf  # (hf_siglip builds on this module)

        config = siglip_config_from_hf(values, where=str(config_path))
    else:
        config = clip_config_from_hf(values, where=str(config_path))
    config.name = directory.name
    preprocessor = directory / "preprocessor_config.json"
    if preprocessor.is_file():  # CLIPImageProcessor's (SiglipImageProcessor's) normalisation and resampling
        processor = json.loads(preprocessor.read_text())
        resample = {code: name for name, code in PIL_RESAMPLE.items()}.get(processor.get("resample"))
        config.preprocess_cfg = dataclasses.replace(
            config.preprocess_cfg, mean=processor.get("image_mean", config.preprocess_cfg.mean),
            std=processor.get("image_std", config.preprocess_cfg.std),
            interpolation=resample or config.preprocess_cfg.interpolation)
    return config, read_hf_weights(directory)


def read_hf_weights(directory: Path) -> State:
    """The state dict of a transformers `save_pretrained` folder: model.safetensors, or the shards its
    index names; ValueError for torch pickles (.bin), which are not read."""
    from safetensors.numpy import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():  # sharded: weight_map names each tensor's file
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(directory / shard)).items()}
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    pickles = sorted(p.name for p in directory.glob("*.bin")) or ["no weights"]
    raise ValueError(
        f"--checkpoint {directory}: no model.safetensors (found {', '.join(pickles)}); torch pickles are not "
        "read, as loading them can run code. Re-save the model as safetensors with transformers: "
        "AutoModel.from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True)"
    )
