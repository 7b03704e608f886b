"""A pretrained language model as CLIP's text tower: RoBERTa, XLM-RoBERTa, BERT or ERNIE from
paddlenlp.transformers, pooled and projected to the embedding (`text_cfg.kind` "paddlenlp").

The two published layouts this reproduces:
  - open_clip's HFTextEncoder (roberta-ViT-B-32, xlm-roberta-*-ViT-*): mean pooling over the
    non-padding tokens (or the encoder's pooler output), then an 'mlp' or 'linear' projection;
  - transformers' VisionTextDualEncoderModel: the encoder's pooler output (CLS -> dense -> tanh),
    then a bias-free Linear.
The encoder's own config is kept as transformers writes it (`encoder_config`) and translated to
PaddleNLP's config class here, so a checkpoint's config.json is readable as it is.
"""

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Set, Tuple

import paddle
import paddle.nn as nn

from ..layers.transformer import run_block


class EncoderFamily(NamedTuple):
    """How paddlenlp.transformers builds one HF model_type."""

    model: str  # paddlenlp.transformers class
    config: str  # its config class
    layer_list: str  # attribute of `.encoder` holding the layers
    # fairseq positions (RoBERTa family): the i-th real token (from 1) sits at pad_token_id + i; padding at pad_token_id
    offset_positions: bool
    hf_defaults: Dict[str, Any]  # transformers' config defaults where they differ from HF_DEFAULTS


# transformers 4.57.6's BertConfig / RobertaConfig / XLMRobertaConfig / ErnieConfig defaults of the
# architecture keys: a composite config.json (VisionTextDualEncoder's text_config) leaves out every
# value equal to them, so a missing key means this value.
HF_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                   pad_token_id=0, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                   initializer_range=0.02)
ENCODERS: Dict[str, EncoderFamily] = {
    "roberta": EncoderFamily("RobertaModel", "RobertaConfig", "layers", True, dict(vocab_size=50265, pad_token_id=1)),
    "xlm-roberta": EncoderFamily("XLMRobertaModel", "XLMRobertaConfig", "layer", True, dict(pad_token_id=1)),
    "bert": EncoderFamily("BertModel", "BertConfig", "layers", False, {}),
    "ernie": EncoderFamily("ErnieModel", "ErnieConfig", "layers", False, dict(use_task_id=False, task_type_vocab_size=3)),
}
POOLERS = ("cls", "mean", "pooler_output", "eos")
PROJECTIONS = ("linear", "mlp", "none")
# hidden_act values that mean the same function in transformers and Paddle (exact erf GELU, ReLU)
ACTIVATIONS = ("gelu", "relu")
# Learned additive embeddings, exempt from weight decay as the CLIP towers' positional embedding is
# (the word embeddings decay, as the CLIP towers' token embedding does).
NO_DECAY_EMBEDDINGS = ("position_embeddings", "token_type_embeddings", "task_type_embeddings")


def _problems(cfg: "PaddleNLPTextConfig") -> List[str]:
    problems = []
    if cfg.kind != "paddlenlp":
        problems.append(f"kind {cfg.kind!r} is not this config's ('paddlenlp')")
    if cfg.encoder not in ENCODERS:
        problems.append(f"encoder {cfg.encoder!r} is not one of {', '.join(ENCODERS)} (the encoder's HF model_type)")
    if cfg.pooler_type not in POOLERS:
        problems.append(f"pooler_type {cfg.pooler_type!r} is not one of {', '.join(POOLERS)}")
    if cfg.proj_type not in PROJECTIONS:
        problems.append(f"proj_type {cfg.proj_type!r} is not one of {', '.join(PROJECTIONS)}")
    if problems:
        return problems
    encoder = cfg.encoder_config
    if encoder.get("model_type", cfg.encoder) != cfg.encoder:
        problems.append(f"encoder_config.model_type {encoder['model_type']!r} differs from encoder {cfg.encoder!r}")
    if encoder["hidden_act"] not in ACTIVATIONS:
        problems.append(f"encoder_config.hidden_act {encoder['hidden_act']!r} is not one of {', '.join(ACTIVATIONS)}")
    if encoder.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"encoder_config.position_embedding_type {encoder['position_embedding_type']!r}: PaddleNLP's "
                        "encoders have absolute position embeddings only")
    if encoder.get("is_decoder") or encoder.get("add_cross_attention"):
        problems.append("encoder_config.is_decoder / add_cross_attention: a text tower is a bidirectional encoder")
    if encoder["hidden_size"] % encoder["num_attention_heads"]:
        problems.append(f"encoder_config.hidden_size {encoder['hidden_size']} is not a multiple of "
                        f"num_attention_heads {encoder['num_attention_heads']}")
    if not 0 < cfg.context_length <= cfg.max_context_length:
        reserved = encoder["max_position_embeddings"] - cfg.max_context_length
        problems.append(f"context_length {cfg.context_length} must be in 1..{cfg.max_context_length} "
                        f"(max_position_embeddings {encoder['max_position_embeddings']}"
                        + (f" less the {reserved} positions RoBERTa reserves up to pad_token_id)" if reserved else ")"))
    return problems


@dataclass
class PaddleNLPTextConfig:
    """A paddlenlp.transformers encoder as the text tower; `encoder_config` is its HF config.json (dict),
    completed with transformers' defaults for the architecture keys it leaves out."""

    kind: str = "paddlenlp"
    encoder: str = "roberta"  # the HF model_type: roberta, xlm-roberta, bert or ernie
    encoder_config: Dict[str, Any] = field(default_factory=dict)
    # 'cls' (first token's state), 'mean' (over non-padding tokens), 'pooler_output' (the encoder's
    # CLS -> dense -> tanh pooler), 'eos' (last non-padding token; right padding)
    pooler_type: str = "mean"
    proj_type: str = "mlp"  # 'linear', 'mlp' (open_clip's Linear-GELU-Linear) or 'none' (hidden_size == embed_dim)
    proj_bias: bool = False
    context_length: int = 77
    tokenizer: str = "hf"  # the tokenizer files are read from the model folder

    @property
    def max_context_length(self) -> int:
        """The most tokens the encoder's position embeddings place (RoBERTa's start after pad_token_id)."""
        reserved = self.encoder_config["pad_token_id"] + 1 if ENCODERS[self.encoder].offset_positions else 0
        return self.encoder_config["max_position_embeddings"] - reserved

    def __post_init__(self):
        if self.encoder in ENCODERS:
            family = ENCODERS[self.encoder]
            self.encoder_config = {**HF_DEFAULTS, **family.hf_defaults, **self.encoder_config}
        problems = _problems(self)
        if problems:
            raise ValueError("text_cfg (kind 'paddlenlp'): " + "; ".join(problems))


def paddlenlp_config(encoder: str, encoder_config: Dict[str, Any]):
    """The PaddleNLP config object of an HF encoder config, every architecture value given explicitly:
    PaddleNLP's defaults differ from transformers' (RobertaConfig: pad_token_id 0 vs 1, type_vocab_size
    16 vs 2, vocab_size 21128 vs 50265)."""
    values = {key: encoder_config[key] for key in {**HF_DEFAULTS, **ENCODERS[encoder].hf_defaults}}
    config_class = getattr(importlib.import_module("paddlenlp.transformers"), ENCODERS[encoder].config)
    return config_class(**values)


def build_encoder(encoder: str, encoder_config: Dict[str, Any], with_pooler: bool) -> nn.Layer:
    """The paddlenlp.transformers model of `encoder`, initialised as transformers initialises it
    (normal(0, initializer_range) Linear and Embedding weights); without its pooler unless asked."""
    from paddlenlp.transformers.model_utils import no_init_weights

    config = paddlenlp_config(encoder, encoder_config)
    model_class = getattr(importlib.import_module("paddlenlp.transformers"), ENCODERS[encoder].model)
    with no_init_weights():  # PaddleNLP's in-place init fails under paddle.LazyGuard
        model = model_class(config)
    if not with_pooler:  # an unused parameter would stall DataParallel; open_clip's towers have none
        model.pooler = None
    init = nn.initializer.Normal(std=config.initializer_range)
    for layer in model.sublayers():
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            init(layer.weight)
        elif isinstance(layer, nn.LayerNorm):  # PaddleNLP sets epsilon in the init it was told to skip
            layer._epsilon = config.layer_norm_eps
    return model


def projection(proj_type: str, width: int, output_dim: int, bias: bool) -> nn.Layer:
    """open_clip's HFTextEncoder projections: 'linear', 'mlp' (hidden (width + output_dim) // 2, exact GELU)."""
    bias_attr = None if bias else False
    if proj_type == "linear":
        return nn.Linear(width, output_dim, bias_attr=bias_attr)
    if proj_type == "mlp":
        hidden = (width + output_dim) // 2
        return nn.Sequential(nn.Linear(width, hidden, bias_attr=bias_attr), nn.GELU(),
                             nn.Linear(hidden, output_dim, bias_attr=bias_attr))
    if width != output_dim:
        raise ValueError(f"text_cfg.proj_type 'none' needs encoder_config.hidden_size ({width}) equal to embed_dim "
                         f"({output_dim}); choose proj_type 'linear' or 'mlp'")
    return nn.Identity()


def _freeze(module: nn.Layer, freeze_layer_norm: bool) -> None:
    """open_clip's HFTextEncoder.lock on one module: LayerNorms frozen only with freeze_layer_norm."""
    for layer in module.sublayers(include_self=True):
        frozen = freeze_layer_norm if isinstance(layer, nn.LayerNorm) else True
        for param in layer.parameters(include_sublayers=False):
            param.stop_gradient = frozen


class PaddleNLPTextTower(nn.Layer):
    """input_ids -> PaddleNLP encoder (padding masked, positions as transformers gives them) -> pool -> project.

    Parameters: `transformer.<PaddleNLP's names>` and `proj.weight` ('linear') or `proj.0.weight`,
    `proj.2.weight` ('mlp'), with `.bias` under proj_bias. The padding mask comes from
    encoder_config['pad_token_id']: features do not depend on how far a batch is padded.
    CLIPConfig.quick_gelu does not reach this tower (open_clip's HFTextEncoder ignores it too).
    """

    def __init__(self, cfg: PaddleNLPTextConfig, output_dim: int, quick_gelu: bool = False,
                 tensor_parallel_degree: int = 1):
        super().__init__()
        if tensor_parallel_degree > 1:
            raise ValueError(f"text_cfg.kind 'paddlenlp' towers are not split for tensor parallelism "
                             f"(tensor_parallel_degree {tensor_parallel_degree}); train them with "
                             "tensor_parallel_degree 1 (data parallelism or sharding)")
        self.context_length = cfg.context_length
        self.pad_token_id = cfg.encoder_config["pad_token_id"]
        self.pooler_type = cfg.pooler_type
        self.family = ENCODERS[cfg.encoder]
        self.transformer = build_encoder(cfg.encoder, cfg.encoder_config, cfg.pooler_type == "pooler_output")
        self.proj = projection(cfg.proj_type, cfg.encoder_config["hidden_size"], output_dim, cfg.proj_bias)
        self.recompute = False

    @property
    def encoder_layers(self) -> nn.LayerList:
        return getattr(self.transformer.encoder, self.family.layer_list)

    @property
    def num_layers(self) -> int:
        return len(self.encoder_layers)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """input_ids: [batch, length] int64 (length <= context_length) -> [batch, output_dim]."""
        return self.proj(self.pool(*self.token_states(input_ids)))

    def token_states(self, input_ids: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """input_ids [batch, length] -> (the encoder's last hidden states [batch, length, width],
        non-padding tokens [batch, length] bool)."""
        if input_ids.shape[1] > self.context_length:
            raise ValueError(f"text of {input_ids.shape[1]} tokens is longer than the model's context_length "
                             f"{self.context_length}; tokenize with context_length=model.context_length")
        valid = input_ids != self.pad_token_id
        x = self.transformer.embeddings(input_ids=input_ids, token_type_ids=paddle.zeros_like(input_ids),
                                        position_ids=self._position_ids(valid))
        # additive key mask [batch, 1, 1, length], as transformers builds it
        mask = (1.0 - valid.astype(x.dtype)).unsqueeze([1, 2]) * paddle.finfo(x.dtype).min
        for layer in self.encoder_layers:
            x = run_block(self, layer, x, mask)
            x = x[0] if isinstance(x, (tuple, list)) else x  # XLM-RoBERTa's layers return tuples
        return x, valid

    def _position_ids(self, valid: paddle.Tensor) -> paddle.Tensor:
        if self.family.offset_positions:  # transformers' create_position_ids_from_input_ids
            valid = valid.astype("int64")
            return paddle.cumsum(valid, axis=1) * valid + self.pad_token_id
        return paddle.arange(valid.shape[1], dtype="int64").unsqueeze(0).expand(valid.shape)

    def pool(self, x: paddle.Tensor, valid: paddle.Tensor) -> paddle.Tensor:
        """Hidden states [batch, length, width] -> [batch, width] by pooler_type."""
        if self.pooler_type == "pooler_output":
            return self.transformer.pooler(x)
        if self.pooler_type == "cls":
            return x[:, 0]
        weights = valid.astype(x.dtype).unsqueeze(-1)
        if self.pooler_type == "mean":  # open_clip's MeanPooler
            return (x * weights).sum(axis=1) / weights.sum(axis=1)
        last = valid.astype("int64").sum(axis=1) - 1  # eos: the last non-padding token
        return paddle.take_along_axis(x, last.reshape([-1, 1, 1]), axis=1, broadcast=True).squeeze(1)

    # ---- what the trainer asks a tower ------------------------------------------------------------
    def set_recompute(self, enable: bool = True) -> None:
        """Recompute each encoder layer's activations in backward (activation memory ~ one layer)."""
        self.recompute = enable

    def no_weight_decay(self) -> Set[str]:
        """Tower-relative names exempt from weight decay: biases and LayerNorm parameters (every
        parameter of at most one dimension), position and token-type embeddings."""
        return {name for name, param in self.named_parameters()
                if param.ndim <= 1 or name.split(".")[-2] in NO_DECAY_EMBEDDINGS}

    def layer_id(self, name: str) -> int:
        """Depth of a tower-relative parameter name: 0 for the embeddings, i + 1 for encoder layer i,
        num_layers + 1 for the pooler and the projection."""
        if name.startswith("transformer.embeddings."):
            return 0
        layer = re.match(rf"transformer\.encoder\.{self.family.layer_list}\.(\d+)\.", name)
        return int(layer.group(1)) + 1 if layer else self.num_layers + 1

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's HFTextEncoder.lock: with unlocked_layers 0 freeze the whole encoder (pooler
        included), else the embeddings and all but the last `unlocked_layers` encoder layers; the
        projection stays trainable, and LayerNorms are frozen only with freeze_layer_norm."""
        if not unlocked_layers:
            _freeze(self.transformer, freeze_layer_norm)
            return
        for module in [self.transformer.embeddings, *self.encoder_layers][:-unlocked_layers]:
            _freeze(module, freeze_layer_norm)
