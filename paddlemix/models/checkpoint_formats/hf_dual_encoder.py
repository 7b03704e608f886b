"""transformers' VisionTextDualEncoderModel (a `save_pretrained` folder) <-> paddlemix CLIP with a PaddleNLP text tower.

A dual encoder pairs a CLIP vision model (`vision_model.vision_model.*`: CLIPModel's vision names one
level down) with a BERT-family text model (`text_model.*`: RoBERTa, XLM-RoBERTa, BERT, ERNIE), each
projected by a bias-free Linear; its text embedding is the text model's pooler output (CLS -> dense
-> tanh). In paddlemix that is text_cfg kind 'paddlenlp' with pooler_type 'pooler_output' and
proj_type 'linear'. The text model keeps transformers' names here (`text.transformer.*`); the shared
step of checkpoint_formats gives them PaddleNLP's. The folder's tokenizer files travel with the
weights both ways (copy_tokenizer_files).
"""

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..clip.paddlenlp_tower import ENCODERS, PaddleNLPTextConfig
from ..configuration import CLIPConfig
from ...utils.tokenizer_files import TOKENIZER_FILES
from ...utils.tokenizer_files import copy_tokenizer_files as copy_files
from .common import State, invert_rules, rename
from .hf import (ACTIVATIONS, DUAL_ENCODER_TYPE, hf_vision_config, rename_clip, to_hf, vision_cfg_from_hf,
                 warn_unclamped_logit_scale)

logger = logging.getLogger(__name__)

# transformers 4.57.6's VisionTextDualEncoderConfig defaults (save_pretrained leaves out equal values)
DUAL_ENCODER_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)
CLIP_VISION_TYPE = "clip_vision_model"
# open_clip tokenizes an HF text tower's captions to 77 tokens, as CLIP's (its DEFAULT_CONTEXT_LENGTH)
CLIP_CONTEXT_LENGTH = 77
DUAL_ENCODER_RENAMES: List[Tuple[str, str]] = [
    (r"^vision_model\.vision_model\.", "vision_model."),  # then CLIPModel's names (hf.rename_clip)
    (r"^text_model\.", "text.transformer."),
    (r"^text_projection\.weight$", "text.proj.weight"),
]
PADDLEMIX_TO_DUAL_ENCODER = invert_rules(DUAL_ENCODER_RENAMES)


def dual_encoder_config_from_hf(values: Dict[str, Any], where: str) -> CLIPConfig:
    """transformers' VisionTextDualEncoderConfig (config.json as a dict) -> paddlemix CLIPConfig, or
    ValueError naming every setting paddlemix cannot express."""
    top = {**DUAL_ENCODER_DEFAULTS, **values}
    vision_values, text_values = dict(values.get("vision_config") or {}), dict(values.get("text_config") or {})
    problems: List[str] = []
    vision_type = vision_values.pop("model_type", None)
    if vision_type != CLIP_VISION_TYPE:
        problems.append(f"vision_config.model_type {vision_type!r}: paddlemix reads CLIP vision towers "
                        f"({CLIP_VISION_TYPE!r})")
    vision_cfg, vision_act = vision_cfg_from_hf(vision_values, "vision_config", problems)
    encoder = text_values.get("model_type")
    if encoder not in ENCODERS:
        problems.append(f"text_config.model_type {encoder!r}: paddlemix's text towers from PaddleNLP are "
                        f"{', '.join(ENCODERS)}")
    if problems:
        raise ValueError(f"{where}: cannot be expressed as a paddlemix CLIP: " + "; ".join(problems))
    return CLIPConfig(
        embed_dim=top["projection_dim"],
        vision_cfg=vision_cfg,
        text_cfg=dual_encoder_text_cfg(text_values, f"{where}: text_config"),
        quick_gelu=ACTIVATIONS[vision_act],
        init_logit_scale=top["logit_scale_init_value"],
    )


def dual_encoder_text_cfg(text_values: Dict[str, Any], where: str) -> PaddleNLPTextConfig:
    """A BERT-family text model's config (its config.json as a dict, model_type included) -> the
    paddlemix text tower of a VisionTextDualEncoderModel: its pooler output, a bias-free Linear, captions
    of CLIP's 77 tokens (fewer where the encoder places fewer); ValueError naming `where` otherwise."""
    try:
        text_cfg = PaddleNLPTextConfig(encoder=text_values.get("model_type"), encoder_config=text_values,
                                       pooler_type="pooler_output", proj_type="linear", context_length=1)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return dataclasses.replace(text_cfg, context_length=min(CLIP_CONTEXT_LENGTH, text_cfg.max_context_length))


def rename_dual_encoder(state: State) -> State:
    """VisionTextDualEncoderModel state dict -> paddlemix names (torch layout; the text model's as transformers')."""
    return rename_clip({rename(key, DUAL_ENCODER_RENAMES): value for key, value in state.items()})


def hf_dual_encoder_config(config: CLIPConfig) -> Dict[str, Any]:
    """paddlemix CLIPConfig with a PaddleNLP text tower -> VisionTextDualEncoderConfig dict; ValueError
    naming what VisionTextDualEncoderModel cannot express."""
    text = config.text_cfg
    problems: List[str] = []
    vision_config = hf_vision_config(config, problems)
    if text.pooler_type != "pooler_output":
        problems.append(f"text_cfg.pooler_type={text.pooler_type!r} (it embeds the text model's pooler output, "
                        "'pooler_output')")
    if text.proj_type != "linear" or text.proj_bias:
        problems.append(f"text_cfg.proj_type={text.proj_type!r}, proj_bias={text.proj_bias} (its text projection is "
                        "a bias-free Linear: 'linear', false)")
    if problems:
        raise ValueError("transformers' VisionTextDualEncoderModel cannot express " + ", ".join(problems))
    warn_unclamped_logit_scale(config)
    return {
        "architectures": ["VisionTextDualEncoderModel"],
        "model_type": DUAL_ENCODER_TYPE,
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "vision_config": {**vision_config, "model_type": CLIP_VISION_TYPE},
        "text_config": {**text.encoder_config, "model_type": text.encoder},
    }


def to_dual_encoder(state: State) -> State:
    """paddlemix state dict (torch layout; the text model's names as transformers') -> VisionTextDualEncoderModel's;
    the inverse of rename_dual_encoder."""
    return {rename(key, PADDLEMIX_TO_DUAL_ENCODER): value for key, value in to_hf(state).items()}


def copy_tokenizer_files(config: CLIPConfig, source: Path, output: Path) -> List[str]:
    """Every tokenizer but CLIP's BPE (`text_cfg.tokenizer` "clip", which ships with paddlemix) reads its
    files from the model folder (PaddleNLP towers, SigLIP): copy the TOKENIZER_FILES `source` (a folder)
    has into `output`; the names copied."""
    if config.text_cfg.tokenizer == "clip":
        return []
    copied = copy_files(source, output)
    if not copied:
        logger.warning("%s has no tokenizer files (%s): copy the text encoder's into %s", source,
                       ", ".join(TOKENIZER_FILES), output)
    return copied
