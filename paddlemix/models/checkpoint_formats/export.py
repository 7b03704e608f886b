"""paddlemix models -> other projects' formats: transformers' `CLIPModel` folder and open_clip's hub layout.

An exporter builds everything it writes in memory first (configs and state dict), so a model the
format cannot express is refused, with the reason, before a file is written. The state mappings are
the import mappings read backwards (`to_hf` in hf.py, `to_open_clip` in open_clip.py).

    hf         config.json + model.safetensors      CLIP                (transformers.CLIPModel.from_pretrained)
                                                    SigLIP              (SiglipModel.from_pretrained)
                                                    CLIP, PaddleNLP     (VisionTextDualEncoderModel.from_pretrained)
                                                    text tower
    open_clip  open_clip_config.json (model_cfg,    CLIP, EVA, SigLIP,  (open_clip.create_model + load_checkpoint)
               preprocess_cfg) + open_clip_model.   CoCa, CLIP with a PaddleNLP text tower (an HFTextEncoder)
               safetensors

open_clip builds EVA image towers as timm `Eva` trunks, and SigLIP's (pool_type 'map') as timm
`VisionTransformer` trunks, by timm model name only: a tower equal to one of timm's EVA-CLIP / SigLIP
trunks gets that name; any other gets a new name and its exact keyword arguments under
`timm_model_kwargs` in open_clip_config.json (with `timm_model_builder`, 'eva' or
'vision_transformer'), to register with timm before `open_clip.create_model`
(tests/fixtures/check_exports.py shows how). A PaddleNLP text tower becomes
open_clip's HFTextEncoder, which reads its encoder's config.json from `text_cfg.hf_model_name`: the
export writes that config.json beside open_clip_config.json, and names the encoder by its hub name
where the config knows it (`_name_or_path`), else by the export folder itself ('.', which open_clip
resolves from the working directory: replace it with the folder's path).
"""

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np

from ..configuration import CLIPConfig, PreprocessConfig, VisionConfig
from .common import State, paddle_to_torch_layout
from .hf import PIL_RESAMPLE, hf_config_from_clip, inexpressible_settings, to_hf
from .hf_dual_encoder import hf_dual_encoder_config, to_dual_encoder
from .hf_siglip import hf_siglip_config, hf_siglip_preprocessor, to_hf_siglip, warn_clamped_logit_scale
from .open_clip import to_open_clip
from .paddlenlp_names import text_tower_to_transformers

logger = logging.getLogger(__name__)

Files = Dict[str, Union[Dict[str, Any], State]]  # file name -> JSON object or state dict
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"

# open_clip's VisionTransformer / TextTransformer / MultimodalTransformer config keys that are ours too.
OPEN_CLIP_VISION_KEYS = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "ls_init_value",
                         "patch_dropout", "pool_type", "no_ln_pre", "final_ln_after_pool", "attentional_pool",
                         "attn_pooler_queries", "attn_pooler_heads")
OPEN_CLIP_TEXT_KEYS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
                       "pool_type", "proj_bias", "embed_cls", "pad_id", "no_causal_mask")
# paddlemix's text_cfg.tokenizer -> open_clip's text_cfg tokenizer keys (open_clip's SigLIP model configs)
OPEN_CLIP_TOKENIZERS = {
    "siglip": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "tokenizer_kwargs": {"clean": "canonicalize"}},
    "siglip2": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP2", "tokenizer_kwargs": {"clean": "canonicalize"}},
}
OPEN_CLIP_DECODER_KEYS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value")
# paddlemix's pooler_type -> open_clip's hf_pooler_type (open_clip/hf_model.py; cls_pooler reads the pooler output)
OPEN_CLIP_HF_POOLERS = {"mean": "mean_pooler", "pooler_output": "cls_pooler", "cls": "cls_last_hidden_state_pooler"}
OPEN_CLIP_NORM_EPS = 1e-5  # open_clip's LayerNorm default; another goes in vision_cfg.norm_kwargs
# The EVA options of a vision tower, mapped to timm Eva keyword arguments by _timm_eva_kwargs.
EVA_VISION_KEYS = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "ls_init_value",
                   "pool_type", "final_ln_after_pool", "no_ln_pre", "patch_bias", "proj_bias", "attn_bias",
                   "norm_eps", "rope", "pt_hw_seq_len", "intp_freq", "naiveswiglu", "subln", "postnorm")
TIMM_EVA_NORM_EPS = 1e-6  # timm Eva's LayerNorm: not a keyword argument
# timm 1.0.29's Eva defaults for the keyword arguments written here, and its EVA-CLIP trunks
# (timm/models/eva.py: eva_giant_patch14_clip_224, eva02_*_clip_*), as _create_eva receives them.
TIMM_EVA_DEFAULTS = dict(img_size=224, qkv_bias=True, qkv_fused=True, mlp_ratio=4.0, swiglu_mlp=False,
                         scale_mlp=False, scale_attn_inner=False, use_rot_pos_emb=False, ref_feat_shape=None,
                         init_values=None, use_post_norm=False)
_EVA02 = dict(qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
              use_rot_pos_emb=True, ref_feat_shape=(16, 16))
TIMM_EVA_CLIP_TRUNKS = {
    "eva_giant_patch14_clip_224": dict(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408),
    "eva02_base_patch16_clip_224": dict(_EVA02, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "eva02_large_patch14_clip_224": dict(_EVA02, img_size=224, patch_size=14, embed_dim=1024, depth=24, num_heads=16),
    "eva02_large_patch14_clip_336": dict(_EVA02, img_size=336, patch_size=14, embed_dim=1024, depth=24, num_heads=16),
    "eva02_enormous_patch14_clip_224": dict(img_size=224, patch_size=14, embed_dim=1792, depth=64, num_heads=16,
                                            mlp_ratio=15360 / 1792, use_post_norm=True),
}


class ExportRefused(ValueError):
    """The format cannot express the model; the message says why."""


def _refuse_if(problems: List[str], fmt: str, config: CLIPConfig) -> None:
    if problems:
        raise ExportRefused(f"{fmt} cannot express this {config.model_type} model: {'; '.join(problems)}")


def _timm_eva_kwargs(vision: VisionConfig, problems: List[str]) -> Dict[str, Any]:
    """timm Eva keyword arguments of an EVA image tower; what timm's Eva cannot take goes to `problems`."""
    problems += inexpressible_settings("vision_cfg", vision, EVA_VISION_KEYS)
    if not (vision.patch_bias and vision.no_ln_pre):
        problems.append("vision_cfg.patch_bias=false or no_ln_pre=false: timm's Eva trunks have a patch-embedding "
                        "bias and no pre-norm (use_pre_transformer_norm=True swaps both, which is not mapped)")
    if not vision.proj_bias:
        problems.append("vision_cfg.proj_bias=false: open_clip projects EVA trunks with timm's head Linear, which has a bias")
    if vision.attn_bias == "qkv":
        problems.append("vision_cfg.attn_bias='qkv': timm's Eva has no key bias (attn_bias 'qv' or 'none')")
    if not math.isclose(vision.norm_eps, TIMM_EVA_NORM_EPS):
        problems.append(f"vision_cfg.norm_eps={vision.norm_eps}: timm's Eva LayerNorms use {TIMM_EVA_NORM_EPS}")
    if vision.pool_type == "map":
        problems.append("vision_cfg.pool_type='map' in an EVA tower: timm's Eva attention-pool head is not mapped")
    if vision.pool_type == "avg" and not vision.final_ln_after_pool:
        problems.append("vision_cfg.pool_type='avg' with final_ln_after_pool=false: timm normalises after mean pooling")
    if vision.naiveswiglu and not vision.subln:
        problems.append("vision_cfg.naiveswiglu without subln: timm packs that SwiGLU into one GluMlp Linear, not mapped")
    image_size = vision.image_size if isinstance(vision.image_size, int) else tuple(vision.image_size)
    grid = image_size // vision.patch_size if isinstance(image_size, int) else None
    if vision.rope and not vision.intp_freq and grid != vision.pt_hw_seq_len:
        problems.append("vision_cfg.rope with intp_freq=false on a grid other than pt_hw_seq_len: timm's rope always "
                        "interpolates to ref_feat_shape")
    return dict(
        img_size=image_size, patch_size=vision.patch_size, embed_dim=vision.width, depth=vision.layers,
        num_heads=vision.heads, mlp_ratio=vision.mlp_ratio, qkv_bias=vision.attn_bias == "qv",
        qkv_fused=not vision.rope,  # as timm's EVA02 (rope) and EVA01 trunks
        swiglu_mlp=vision.naiveswiglu, scale_mlp=vision.subln, scale_attn_inner=vision.subln,
        use_rot_pos_emb=vision.rope, ref_feat_shape=(vision.pt_hw_seq_len,) * 2 if vision.rope else None,
        init_values=vision.ls_init_value, use_post_norm=vision.postnorm,
    )


# The options of a SigLIP image tower, mapped to timm VisionTransformer keyword arguments by _timm_vit_kwargs.
TIMM_VIT_VISION_KEYS = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio", "pool_type",
                        "class_token", "proj_type", "no_ln_pre", "patch_bias", "norm_eps")
TIMM_VIT_NORM_EPS = 1e-6  # timm's ViT LayerNorm default
# timm 1.0.29's SigLIP ViT trunks (timm/models/vision_transformer.py vit_*_siglip_*), as
# _create_vision_transformer receives them, img_size from their pretrained cfg's input size
_SIGLIP = dict(class_token=False, global_pool="map", mlp_ratio=4.0)
TIMM_SIGLIP_TRUNKS = {
    "vit_base_patch16_siglip_224": dict(_SIGLIP, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch16_siglip_256": dict(_SIGLIP, img_size=256, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_siglip_256": dict(_SIGLIP, img_size=256, patch_size=16, embed_dim=1024, depth=24,
                                         num_heads=16),
    "vit_so400m_patch14_siglip_224": dict(_SIGLIP, img_size=224, patch_size=14, embed_dim=1152, depth=27,
                                          num_heads=16, mlp_ratio=3.7362),
}


def _timm_vit_kwargs(config: CLIPConfig, problems: List[str]) -> Dict[str, Any]:
    """timm VisionTransformer keyword arguments of a SigLIP image tower; what open_clip's timm trunk
    cannot take goes to `problems`."""
    vision = config.vision_cfg
    problems += inexpressible_settings("vision_cfg", vision, TIMM_VIT_VISION_KEYS)
    if vision.proj_type != "none":
        problems.append("vision_cfg.proj_type='linear' with pool_type 'map': open_clip's timm_proj Linear is not "
                        "mapped")
    if not (vision.patch_bias and vision.no_ln_pre):
        problems.append("vision_cfg.patch_bias=false or no_ln_pre=false: timm's SigLIP ViTs have a patch-embedding "
                        "bias and no pre-norm (pre_norm=True swaps both, which is not mapped)")
    if not math.isclose(vision.norm_eps, TIMM_VIT_NORM_EPS):
        problems.append(f"vision_cfg.norm_eps={vision.norm_eps}: timm's ViT LayerNorms use {TIMM_VIT_NORM_EPS}")
    if config.quick_gelu:
        problems.append("quick_gelu=true: open_clip's timm trunks always use exact GELU")
    image_size = vision.image_size if isinstance(vision.image_size, int) else tuple(vision.image_size)
    return dict(img_size=image_size, patch_size=vision.patch_size, embed_dim=vision.width, depth=vision.layers,
                num_heads=vision.heads, mlp_ratio=vision.mlp_ratio, class_token=vision.class_token, global_pool="map")


def _timm_trunk_name(kwargs: Dict[str, Any], trunks: Dict[str, Dict[str, Any]],
                     defaults: Dict[str, Any]) -> Union[str, None]:
    """The name of the timm trunk in `trunks` whose keyword arguments (over `defaults`) are `kwargs`."""
    wanted = {**defaults, **kwargs}
    for name, trunk in trunks.items():
        known = {**defaults, **trunk}
        if all(known[k] == v if not isinstance(v, float) else math.isclose(known[k], v) for k, v in wanted.items()):
            return name
    return None


def _open_clip_text_options(text, problems: List[str]) -> Dict[str, Any]:
    """open_clip's text_cfg keys for the settings paddlemix names otherwise (LayerNorm eps, GELU
    approximation, tokenizer); what open_clip cannot hold goes to `problems`."""
    options: Dict[str, Any] = {}
    if not math.isclose(text.norm_eps, OPEN_CLIP_NORM_EPS):
        options["norm_kwargs"] = {"eps": text.norm_eps}
    if text.gelu_approximate != "none":
        options["act_kwargs"] = {"approximate": text.gelu_approximate}
    if text.tokenizer in OPEN_CLIP_TOKENIZERS:
        options.update(OPEN_CLIP_TOKENIZERS[text.tokenizer])
    elif text.tokenizer != "clip":
        problems.append(f"text_cfg.tokenizer={text.tokenizer!r}: no open_clip tokenizer name is known for it")
    return options


def _preprocess_cfg(preprocess: PreprocessConfig, image_size) -> Dict[str, Any]:
    return {"size": image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
            "interpolation": preprocess.interpolation, "resize_mode": preprocess.resize_mode,
            "fill_color": preprocess.fill_color}


def _hf_text_cfg(text, problems: List[str]) -> Dict[str, Any]:
    """open_clip's text_cfg of an HFTextEncoder for a PaddleNLP text tower; what it cannot hold goes to `problems`."""
    if text.pooler_type not in OPEN_CLIP_HF_POOLERS:
        problems.append(f"text_cfg.pooler_type={text.pooler_type!r}: open_clip's HF text poolers are "
                        f"{', '.join(OPEN_CLIP_HF_POOLERS)} in paddlemix's names")
    if text.proj_bias:
        problems.append("text_cfg.proj_bias=true: open_clip's HF text projections have no bias")
    name = text.encoder_config.get("_name_or_path") or "."
    if name == ".":
        logger.warning("text_cfg.hf_model_name '.': open_clip reads the text encoder's config.json from there, "
                       "relative to the working directory; replace it with the export folder's path")
    return {"hf_model_name": name, "hf_tokenizer_name": name, "hf_model_pretrained": False,
            "hf_pooler_type": OPEN_CLIP_HF_POOLERS.get(text.pooler_type),
            "hf_proj_type": None if text.proj_type == "none" else text.proj_type, "context_length": text.context_length}


def open_clip_files(config: CLIPConfig, state: State) -> Files:
    """open_clip's hub layout of a paddlemix CLIP / EVA-CLIP / SigLIP / CoCa (state in Paddle layout)."""
    vision, text = config.vision_cfg, config.text_cfg
    is_eva, is_coca, is_hf_text = config.model_type == "evaclip", config.model_type == "coca", text.kind == "paddlenlp"
    problems: List[str] = []
    if is_hf_text:
        text_cfg = _hf_text_cfg(text, problems)
    else:
        # norm_eps, gelu_approximate and tokenizer go under open_clip's own keys (_open_clip_text_options)
        problems += inexpressible_settings("text_cfg", text, OPEN_CLIP_TEXT_KEYS + ("norm_eps", "gelu_approximate",
                                                                                    "tokenizer"))
        text_cfg = {key: getattr(text, key) for key in OPEN_CLIP_TEXT_KEYS}
        text_cfg.update(_open_clip_text_options(text, problems))
    extra: Dict[str, Any] = {}
    is_siglip = vision.pool_type == "map"
    if is_eva or is_siglip:
        if is_eva:
            kwargs, builder = _timm_eva_kwargs(vision, problems), "eva"
            name = _timm_trunk_name(kwargs, TIMM_EVA_CLIP_TRUNKS, TIMM_EVA_DEFAULTS)
            pool, proj = "token" if vision.pool_type == "tok" else "avg", None
        else:
            kwargs, builder = _timm_vit_kwargs(config, problems), "vision_transformer"
            name, pool, proj = _timm_trunk_name(kwargs, TIMM_SIGLIP_TRUNKS, {}), "map", "none"
        if name is None:
            # a timm model name: letters, digits and '_' ('.' would start a pretrained tag)
            name = f"paddlemix_{'eva' if is_eva else 'siglip'}_" + re.sub(r"[^0-9a-z]+", "_",
                                                                           (config.name or "custom").lower())
            extra.update(timm_model_kwargs=kwargs, timm_model_builder=builder)
            logger.warning("no timm trunk has this tower's options: %s names it %r, with its timm %s kwargs under "
                           "timm_model_kwargs; register that name with timm before open_clip.create_model",
                           OPEN_CLIP_CONFIG, name, builder)
        vision_cfg = {"image_size": vision.image_size, "timm_model_name": name, "timm_model_pretrained": False,
                      "timm_pool": pool, "timm_proj": proj}
        if vision.drop_path_rate:
            vision_cfg["timm_drop_path"] = vision.drop_path_rate
    else:
        problems += inexpressible_settings("vision_cfg", vision, OPEN_CLIP_VISION_KEYS + ("norm_eps",))
        vision_cfg = {key: getattr(vision, key) for key in OPEN_CLIP_VISION_KEYS}
        if not math.isclose(vision.norm_eps, OPEN_CLIP_NORM_EPS):
            vision_cfg["norm_kwargs"] = {"eps": vision.norm_eps}
    _refuse_if(problems, "open_clip", config)
    model_cfg: Dict[str, Any] = {"embed_dim": config.embed_dim, "quick_gelu": config.quick_gelu,
                                 "init_logit_scale": config.init_logit_scale,
                                 "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if config.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = config.init_logit_bias
    if is_coca:
        vision_cfg["output_tokens"] = text_cfg["output_tokens"] = True
        model_cfg["multimodal_cfg"] = {key: getattr(config.multimodal_cfg, key) for key in OPEN_CLIP_DECODER_KEYS}
    custom_text = is_eva or is_siglip or is_coca or is_hf_text
    if custom_text:
        model_cfg["custom_text"] = True
    torch_state = text_tower_to_transformers(paddle_to_torch_layout(state), text)
    eva_trunk = None
    if is_eva:
        eva_trunk = (not vision.rope, "norm" if vision.pool_type == "tok" else "fc_norm")
    elif is_siglip:  # fused q/k/v; the final norm before the attention-pool head
        eva_trunk = (True, "norm")
    hub_config = {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(config.preprocess_cfg, vision.image_size),
                  **extra}
    files = {OPEN_CLIP_CONFIG: hub_config,
             OPEN_CLIP_WEIGHTS: to_open_clip(torch_state, text_at_top=not custom_text, eva_trunk=eva_trunk)}
    if is_hf_text:  # the HFTextEncoder's encoder config, for text_cfg.hf_model_name
        files["config.json"] = {**text.encoder_config, "model_type": text.encoder}
    return files


def hf_siglip_files(config: CLIPConfig, state: State) -> Files:
    """transformers' SiglipModel folder of a paddlemix SigLIP model (state in Paddle layout)."""
    try:
        hf_config = hf_siglip_config(config)
    except ValueError as err:
        raise ExportRefused(f"hf: {err}") from err
    warn_clamped_logit_scale(config, state)
    return {"config.json": hf_config, "preprocessor_config.json": hf_siglip_preprocessor(config),
            "model.safetensors": to_hf_siglip(paddle_to_torch_layout(state))}


def hf_files(config: CLIPConfig, state: State) -> Files:
    """transformers' CLIPModel folder of a paddlemix CLIP, its SiglipModel folder for SigLIP towers (the
    'map' image head), or its VisionTextDualEncoderModel folder where the text tower is a PaddleNLP one
    (state in Paddle layout)."""
    if config.vision_cfg.pool_type == "map" and config.text_cfg.kind == "clip":
        return hf_siglip_files(config, state)
    dual_encoder = config.text_cfg.kind == "paddlenlp"
    try:
        hf_config = hf_dual_encoder_config(config) if dual_encoder else hf_config_from_clip(config)
    except ValueError as err:
        raise ExportRefused(f"hf: {err}") from err
    preprocess = config.preprocess_cfg
    if preprocess.resize_mode != "shortest":
        logger.warning("preprocess_cfg.resize_mode=%r: CLIPImageProcessor resizes the shortest side and crops; "
                       "preprocessor_config.json says so", preprocess.resize_mode)
    size = hf_config["vision_config"]["image_size"]
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
                 "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                 "image_mean": list(preprocess.mean), "image_std": list(preprocess.std),
                 "resample": PIL_RESAMPLE[preprocess.interpolation]}
    torch_state = text_tower_to_transformers(paddle_to_torch_layout(state), config.text_cfg)
    return {"config.json": hf_config, "preprocessor_config.json": processor,
            "model.safetensors": to_dual_encoder(torch_state) if dual_encoder else to_hf(torch_state)}


FORMATS = {"hf": hf_files, "open_clip": open_clip_files}


def export_files(fmt: str, config: CLIPConfig, state: State) -> Files:
    """Everything `fmt` needs for this model, in memory; ExportRefused (nothing written) if it cannot express it."""
    if fmt not in FORMATS:
        raise ValueError(f"--to {fmt!r} is not supported; choose from {', '.join(sorted(FORMATS))}")
    return FORMATS[fmt](config, state)


def write_files(files: Files, output: Path) -> None:
    from safetensors.numpy import save_file

    output.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            # safetensors writes an array's memory as it lies: transposed views must be copied in order first
            state = {key: np.array(value, order="C") for key, value in content.items()}
            save_file(state, str(output / name), metadata={"format": "pt"})  # transformers checks "format"
        else:
            (output / name).write_text(json.dumps(content, indent=2) + "\n")
