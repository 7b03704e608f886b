"""A CLIP assembled from two pretrained towers, as transformers' `VisionTextDualEncoderModel.
from_vision_text_pretrained` assembles one (the contrastive-image-text example's `save_clip_roberta.py` step):

    model = DualEncoder.from_vision_text_pretrained("clip-vit-base-patch32/", "roberta-base/")
    model.save_pretrained("clip-roberta")  # config.json, model_state.pdparams, roberta-base's tokenizer files
    AutoModel.from_pretrained("clip-roberta"); get_tokenizer("clip-roberta")

The image tower is a CLIP's: a paddlemix model directory or registry name (CLIP or EVA-CLIP), or a
transformers CLIPModel folder. The text tower is a BERT-family language model folder (RoBERTa,
XLM-RoBERTa, BERT, ERNIE: config.json, model.safetensors and tokenizer files, as transformers'
save_pretrained or the hub keep them), embedded as transformers embeds it: its pooler output, then a
new bias-free Linear (text_cfg kind 'paddlenlp', checkpoint_formats.hf_dual_encoder). Weights go
through the checkpoint converters, as `convert --source hf` takes them.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import paddle
import paddle.nn as nn

from ...utils.log import logger
from ..checkpoint_formats import convert_state
from ..checkpoint_formats.common import State
from ..checkpoint_formats.hf import read_hf_folder, read_hf_weights
from ..checkpoint_formats.hf_dual_encoder import DUAL_ENCODER_DEFAULTS, copy_tokenizer_files, dual_encoder_text_cfg
from ..configuration import CONFIG_NAME, CLIPConfig
from ..hub import WEIGHTS_NAME
from ..state_dict import load_state_dict_strict
from .modeling import CLIP
from .paddlenlp_tower import PaddleNLPTextConfig

PathOrName = Union[str, Path]
# transformers' base_model_prefix of each encoder: a task model's checkpoint (the hub's roberta-base is a
# RobertaForMaskedLM) keeps the encoder under it, beside its heads.
BASE_MODEL_PREFIXES = {"roberta": "roberta", "xlm-roberta": "roberta", "bert": "bert", "ernie": "ernie"}
VISUAL_PROJECTION = ("visual.proj", "visual.proj_bias")
TEXT_POOLER = "text.transformer.pooler."


def _image_tower(vision: PathOrName) -> Tuple[CLIPConfig, State]:
    """(the source CLIP's config, its `visual.*` weights in paddlemix names and layout)."""
    folder = Path(vision).expanduser()
    if (folder / CONFIG_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file():  # transformers' folder
        config, state = read_hf_folder(folder)
        state = convert_state("hf", state, config.text_cfg)
    else:
        from ..auto import AutoModel  # (auto imports the model classes)

        source = AutoModel.from_pretrained(vision)
        config, state = source.config, {key: value.numpy() for key, value in source.state_dict().items()}
    if config.model_type not in ("clip", "evaclip"):
        raise ValueError(f"vision {vision}: a {config.model_type} model; the image tower is taken from a CLIP or "
                         "EVA-CLIP (a CoCa image tower pools for its captioning decoder)")
    return config, {key: value for key, value in state.items() if key.startswith("visual.")}


def _encoder_state(state: State, encoder: str, folder: Path) -> State:
    """A transformers text model's weights, encoder-relative: a task model's heads left out."""
    prefix = BASE_MODEL_PREFIXES[encoder] + "."
    if not any(key.startswith(prefix) for key in state):
        return state
    heads = sorted({key.split(".")[0] for key in state if not key.startswith(prefix)})
    if heads:
        logger.info("text %s: the encoder under '%s' is used, its task heads (%s) are not", folder, prefix,
                    ", ".join(heads))
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _text_tower(text: PathOrName, context_length: Optional[int]) -> Tuple[PaddleNLPTextConfig, State]:
    """(the text tower's config, its `text.transformer.*` weights in paddlemix names and layout)."""
    folder = Path(text).expanduser()
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"text {text}: no {CONFIG_NAME}; give the folder of a transformers RoBERTa, "
                                "XLM-RoBERTa, BERT or ERNIE model (its save_pretrained or hub files)")
    text_cfg = dual_encoder_text_cfg(json.loads(config_path.read_text()), str(config_path))
    if context_length is not None:
        try:
            text_cfg = dataclasses.replace(text_cfg, context_length=context_length)
        except ValueError as err:
            raise ValueError(f"context_length={context_length}: {err}") from err
    state = _encoder_state(read_hf_weights(folder), text_cfg.encoder, folder)
    return text_cfg, convert_state("hf", {f"text_model.{key}": value for key, value in state.items()}, text_cfg)


def _init_like_torch_linear(param: paddle.Tensor) -> None:
    """torch's nn.Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Paddle layout [in, out]), which
    transformers' dual encoder leaves its projections with."""
    bound = 1 / math.sqrt(param.shape[0])
    nn.initializer.Uniform(-bound, bound)(param)


class DualEncoder(CLIP):
    """A CLIP made from a pretrained image tower and a pretrained language model (module docstring).

    It is a CLIP (model_type 'clip'; AutoModel.from_pretrained loads what it saves as one) whose
    `save_pretrained` also writes the text tower's tokenizer files beside the weights.
    """

    @classmethod
    def from_vision_text_pretrained(cls, vision: PathOrName, text: PathOrName, projection_dim: int = 512,
                                    logit_scale_init_value: float = DUAL_ENCODER_DEFAULTS["logit_scale_init_value"],
                                    context_length: Optional[int] = None) -> "DualEncoder":
        """Join `vision`'s image tower and `text`'s language model, both projected to `projection_dim`.

        vision: a paddlemix CLIP / EVA-CLIP model directory or registry name, or a transformers CLIPModel
            (or VisionTextDualEncoderModel) save_pretrained folder; its preprocessing and quick_gelu
            come along.
        text: a transformers BERT-family model folder (config.json, model.safetensors, tokenizer files).
        projection_dim: the embedding width (embed_dim) of both towers.
        logit_scale_init_value: the initial logit_scale (log of the temperature's inverse; transformers'
            default 2.6592 = ln(1 / 0.07)).
        context_length: tokens per caption; default CLIP's 77, or fewer where the encoder places fewer.

        Reused: the whole image tower and, unlike transformers, its visual projection where its
        output width equals `projection_dim` (transformers starts its visual projection afresh,
        although its example's README says the CLIP one is reused); the language model, its pooler
        included where the checkpoint has one (a masked-LM checkpoint such as roberta-base has none:
        it starts as transformers starts it, N(0, initializer_range) and zero bias).
        New, initialised as transformers initialises them: the text projection (and the visual one
        where the widths differ), torch Linear's U(+-1/sqrt(in_features)); logit_scale.
        The model's tokenizer is read from `text` (get_tokenizer(model)) until save_pretrained copies
        its files beside the weights. Returned in eval mode, as AutoModel.from_pretrained returns models.
        """
        source, image_state = _image_tower(vision)
        text_cfg, text_state = _text_tower(text, context_length)
        config = CLIPConfig(embed_dim=projection_dim, vision_cfg=source.vision_cfg, text_cfg=text_cfg,
                           preprocess_cfg=source.preprocess_cfg, quick_gelu=source.quick_gelu,
                           init_logit_scale=logit_scale_init_value)
        config.name_or_path = str(Path(text).expanduser())  # the home of its tokenizer files
        model = cls(config)
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        fresh = ["text.proj.weight", "logit_scale"]
        if image_state["visual.proj"].shape != expected["visual.proj"]:
            logger.info("vision %s projects to %d, projection_dim is %d: the visual projection starts afresh",
                        vision, image_state["visual.proj"].shape[1], projection_dim)
            fresh += [key for key in VISUAL_PROJECTION if key in expected]
            _init_like_torch_linear(model.visual.proj)
        pooler = sorted(key for key in expected if key.startswith(TEXT_POOLER))
        if not any(key in text_state for key in pooler):
            logger.warning("text %s has no pooler weights (a masked-LM checkpoint): the pooler, whose output is the "
                           "text embedding, starts from random weights, as in transformers", text)
            fresh += pooler
        _init_like_torch_linear(model.text.proj.weight)
        state = model.state_dict()
        pretrained: Dict[str, object] = {key: value for key, value in {**image_state, **text_state}.items()
                                         if key not in fresh}
        pretrained.update({key: state[key] for key in fresh})  # the new weights stay as initialised
        load_state_dict_strict(model, pretrained, source=f"vision {vision} + text {text}")
        model.eval()
        return model

    def save_pretrained(self, directory: PathOrName) -> Path:
        """CLIP's save_pretrained, then the text tower's tokenizer files copied beside the weights."""
        directory = super().save_pretrained(directory)
        if self.config.name_or_path is not None and Path(self.config.name_or_path).is_dir():
            copy_tokenizer_files(self.config, Path(self.config.name_or_path), directory)
        return directory
