"""Model configuration: open_clip-style JSON (`embed_dim`, `vision_cfg`, `text_cfg`) as dataclasses.

A config file holds everything needed to rebuild a model; `model_type` picks the family class
(see `paddlemix.models.registry`). Unknown keys are an error, never silently dropped, so a typo in
a hand-written config is caught where it is made.
"""

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..utils.log import logger
from .towers import DEFAULT_TEXT_KIND, text_config_class

CONFIG_NAME = "config.json"
# Per-channel RGB mean/std of CLIP's training images, from openai/CLIP clip/clip.py `_transform`.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear")  # image resampling filters (processors.image_transforms)
RESIZE_MODES = ("shortest", "squash", "longest")  # open_clip's resize_mode values


# Keys that once chose paddlemix's fused kernels (fusedLN is PaddleMIX's too). The fused ops now run
# wherever they build, whatever a config says (PPMIX_FUSED_OPS=0 turns them off): read and dropped.
RETIRED_KERNEL_KEYS = ("fusedLN", "fused_bias_gelu")


def _from_dict(cls, values: Dict[str, Any], where: str):
    """Build dataclass `cls` from `values`, naming `where` and the closest valid keys on a typo."""
    known = {f.name for f in dataclasses.fields(cls)}
    retired = [key for key in RETIRED_KERNEL_KEYS if key in values and key not in known]
    if retired:
        logger.info(f"{where}: {', '.join(retired)} no longer choose kernels: paddlemix's fused ops run wherever "
                  "they build (PPMIX_FUSED_OPS=0 turns them off)")
        values = {key: value for key, value in values.items() if key not in retired}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3)
            hints.append(f"'{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(known))}")
    return cls(**values)


@dataclass
class VisionConfig:
    """ViT image tower. `width // head_width` heads; `mlp_ratio * width` hidden units.

    The defaults are OpenAI CLIP's ViT; EVA-CLIP's towers switch on the options below the line, and
    SigLIP's (timm's ViT in open_clip) class_token false, pool_type 'map', proj_type 'none', no_ln_pre,
    patch_bias and norm_eps 1e-6 (transformers' SiglipModel adds gelu_approximate 'tanh').
    """

    image_size: Union[int, Tuple[int, int]] = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None  # layer scale initial value; None disables layer scale
    patch_dropout: float = 0.0  # fraction of patch tokens dropped in training
    # 'tok' (class token), 'avg' (mean of patch tokens) or 'map' (timm's AttentionPoolLatent head: SigLIP)
    pool_type: str = "tok"
    no_ln_pre: bool = False
    final_ln_after_pool: bool = False
    class_token: bool = True  # a learned class token before the patch tokens (SigLIP has none: timm class_token=False)
    proj_type: str = "linear"  # 'linear' (width x embed_dim matrix) or 'none' (the pooled width is embed_dim)
    # ---- EVA-CLIP options (names as in the EVA-CLIP configs where they exist)
    patch_bias: bool = False  # bias in the patch-embedding convolution
    proj_bias: bool = False  # bias after the output projection (EVA's `head` Linear)
    attn_bias: str = "qkv"  # biases of the q/k/v projections: 'qkv', 'qv' (EVA: key has none) or 'none'
    norm_eps: float = 1e-5  # LayerNorm epsilon (EVA towers use 1e-6)
    rope: bool = False  # 2-D rotary position embedding on q and k of the patch tokens
    pt_hw_seq_len: int = 16  # rope: grid side the frequencies were pretrained at
    intp_freq: bool = True  # rope: rescale positions of a different grid to the pretrained one
    naiveswiglu: bool = False  # SwiGLU MLP (w1 gate, w2, SiLU, w3) instead of Linear-GELU-Linear
    subln: bool = False  # sub-LN: LayerNorm before the attention output and MLP output projections
    postnorm: bool = False  # residual post-norm blocks: x + ln(attn(x)) (EVA02-CLIP-bigE)
    xattn: bool = False  # fused attention kernel where the device has one (same result as the fallback)
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this rate in the last block
    # ---- CoCa: attentional pooling of the tokens into `attn_pooler_queries` embed_dim-wide queries;
    # the first query is the contrastive embedding, the others are the captioning decoder's image tokens
    attentional_pool: bool = False
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    # 'tanh': every MLP's GELU (the blocks' and the 'map' head's) in tanh approximation, as transformers'
    # SiglipModel (hidden_act gelu_pytorch_tanh) and big_vision compute it; timm's SigLIP ViT uses exact GELU
    gelu_approximate: str = "none"

    def __post_init__(self):
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"vision_cfg.gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass
class TextConfig:
    """Causal text transformer with argmax-EOT pooling (OpenAI CLIP); `kind` "clip" in models.towers."""

    kind: str = "clip"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None
    pool_type: str = "argmax"  # 'argmax' (EOT has the highest id), 'first', 'last'
    proj_bias: bool = False
    xattn: bool = False  # fused attention kernel where the device has one (same result as the fallback)
    # CoCa: a learned CLS token appended after the text, whose output is the text embedding (any
    # pool_type is then ignored); pad tokens (`pad_id`) are masked as keys, as in open_clip's CoCa
    embed_cls: bool = False
    pad_id: int = 0
    tokenizer: str = "clip"  # processors.factory.TOKENIZERS: CLIP's byte-level BPE
    # ---- SigLIP options (open_clip's text_cfg no_causal_mask, norm_kwargs.eps, act_kwargs.approximate)
    no_causal_mask: bool = False  # bidirectional attention; padding is not masked either, as in open_clip
    norm_eps: float = 1e-5  # LayerNorm epsilon of every block and ln_final (SigLIP: 1e-6)
    gelu_approximate: str = "none"  # 'tanh': the MLPs' GELU in tanh approximation (SigLIP 2)

    def __post_init__(self):
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"text_cfg.gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")
        if self.kind != "clip":
            raise ValueError(f"text_cfg: kind {self.kind!r} is not this config's ('clip'); build it with CLIPConfig.from_dict")


@dataclass
class MultimodalConfig:
    """CoCa's captioning decoder: causal self-attention + cross-attention to the image tokens per layer."""

    context_length: int = 76
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None


@dataclass
class PreprocessConfig:
    """How the model's training images were prepared (open_clip's `PreprocessCfg`); the image size is
    `vision_cfg.image_size`. The defaults are OpenAI CLIP's, which most CLIP-family weights keep."""

    mean: Tuple[float, float, float] = OPENAI_DATASET_MEAN  # per-channel RGB mean of the 0..1 pixels
    std: Tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"  # 'bicubic' or 'bilinear'
    # 'shortest': shortest side to the size, center crop; 'squash': both sides to the size, aspect
    # ratio not kept (DFN); 'longest': longest side to the size, center pad with `fill_color`
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self):
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"preprocess_cfg: mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess_cfg: interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"preprocess_cfg: resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


@dataclass
class CLIPConfig:
    """A whole CLIP model: two towers projected to a shared `embed_dim`."""

    embed_dim: int = 512
    vision_cfg: VisionConfig = field(default_factory=VisionConfig)
    text_cfg: TextConfig = field(default_factory=TextConfig)  # or another kind's config (models.towers)
    preprocess_cfg: PreprocessConfig = field(default_factory=PreprocessConfig)
    quick_gelu: bool = False  # OpenAI's original weights were trained with QuickGELU
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100)  # logit_scale is clamped here in forward
    # SigLIP: the initial logit bias (-10 in the paper and open_clip); None: no logit_bias parameter
    init_logit_bias: Optional[float] = None
    model_type: str = "clip"
    loss: str = "clip"  # the training loss, models.loss_registry.LOSSES
    name: Optional[str] = None  # registry name this config came from, if any
    # How this process splits the model (runtime, not architecture): saved checkpoints and configs
    # are always unsharded, with 1 here.
    tensor_parallel_degree: int = 1
    # Where this config was read from (a model directory or registry name): the home of its
    # tokenizer files. Runtime only, not saved.
    name_or_path: Optional[str] = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], where: str = "config") -> "CLIPConfig":
        values = dict(values)
        towers = {}
        for name, field_type in cls.tower_configs().items():
            tower_values = values.pop(name, {})
            if field_type is TextConfig:  # the text tower's kind picks its dataclass (models.towers)
                field_type = text_config_class(tower_values.get("kind", DEFAULT_TEXT_KIND), f"{where}: {name}")
            towers[name] = _from_dict(field_type, tower_values, f"{where}: {name}")
        config = _from_dict(cls, values, where)
        for name, tower in towers.items():
            setattr(config, name, tower)
        return config

    @classmethod
    def tower_configs(cls) -> Dict[str, type]:
        """Nested config fields and their dataclasses."""
        return {"vision_cfg": VisionConfig, "text_cfg": TextConfig, "preprocess_cfg": PreprocessConfig}

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "CLIPConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(values, where=str(path))

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["name_or_path"]
        return values

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass
class CoCaConfig(CLIPConfig):
    """CoCa (Yu et al. 2022) as in open_clip: CLIP towers with attentional pooling and an embedded
    CLS token, plus the captioning decoder."""

    multimodal_cfg: MultimodalConfig = field(default_factory=MultimodalConfig)
    model_type: str = "coca"
    loss: str = "coca"

    @classmethod
    def tower_configs(cls) -> Dict[str, type]:
        return {**super().tower_configs(), "multimodal_cfg": MultimodalConfig}
