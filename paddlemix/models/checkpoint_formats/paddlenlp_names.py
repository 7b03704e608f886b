"""transformers' BERT-family text models (BERT, RoBERTa, XLM-RoBERTa, ERNIE) <-> PaddleNLP's parameter names.

PaddleNLP builds BERT, RoBERTa and ERNIE from paddle.nn.TransformerEncoder, with its names; its
XLM-RoBERTa keeps transformers' names. (PaddleNLP's own `_get_name_mappings` are not used: in
paddlenlp 3.0.0b4 RobertaModel's maps the pooler to `roberta.pooler.*`, BertModel's and
XLMRobertaModel's fail on a config without `architectures`, and ErnieModel has none.) Names are
in torch's layout; Linear weights are transposed by the shared step.

Every source names a PaddleNLP text tower's encoder `text.transformer.<transformers' name>` (open_clip's
HFTextEncoder layout); `text_tower_from_transformers` then gives PaddleNLP's names for the config's
encoder, which the state dict alone cannot tell (RoBERTa and XLM-RoBERTa share transformers' names).
"""

import re
from typing import Any, List, Tuple

from .common import State, invert_rules, rename

TRANSFORMER_ENCODER_RENAMES: List[Tuple[str, str]] = [
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (r"^encoder\.layer\.", "encoder.layers."),
    (r"\.attention\.self\.query\.", ".self_attn.q_proj."),
    (r"\.attention\.self\.key\.", ".self_attn.k_proj."),
    (r"\.attention\.self\.value\.", ".self_attn.v_proj."),
    (r"\.attention\.output\.dense\.", ".self_attn.out_proj."),
    (r"\.attention\.output\.LayerNorm\.", ".norm1."),
    (r"\.intermediate\.dense\.", ".linear1."),
    (r"\.output\.dense\.", ".linear2."),  # after attention.output.dense
    (r"\.output\.LayerNorm\.", ".norm2."),
]
PADDLENLP_TO_TRANSFORMERS = invert_rules(TRANSFORMER_ENCODER_RENAMES)
SAME_NAMES = {"xlm-roberta"}  # encoders PaddleNLP names as transformers does
# Buffers transformers rebuilds (older versions saved position_ids).
HF_BUFFERS = re.compile(r"embeddings\.(?:position_ids|token_type_ids)")


def hf_text_to_paddlenlp(state: State, encoder: str) -> State:
    """A transformers text model's state dict (encoder-relative names) -> PaddleNLP's names for `encoder`."""
    rules = [] if encoder in SAME_NAMES else TRANSFORMER_ENCODER_RENAMES
    return {rename(key, rules): value for key, value in state.items() if not HF_BUFFERS.fullmatch(key)}


def paddlenlp_to_hf_text(state: State, encoder: str) -> State:
    """The inverse of hf_text_to_paddlenlp."""
    rules = [] if encoder in SAME_NAMES else PADDLENLP_TO_TRANSFORMERS
    return {rename(key, rules): value for key, value in state.items()}


ENCODER_PREFIX = "text.transformer."


def _map_text_tower(state: State, text_cfg: Any, mapping) -> State:
    if getattr(text_cfg, "kind", None) != "paddlenlp":
        return state
    tower = {key[len(ENCODER_PREFIX):]: value for key, value in state.items() if key.startswith(ENCODER_PREFIX)}
    out = {key: value for key, value in state.items() if not key.startswith(ENCODER_PREFIX)}
    out.update({ENCODER_PREFIX + key: value for key, value in mapping(tower, text_cfg.encoder).items()})
    return out


def text_tower_from_transformers(state: State, text_cfg: Any) -> State:
    """paddlemix state dict whose PaddleNLP text tower (text_cfg.kind 'paddlenlp') has transformers'
    names -> PaddleNLP's; any other text tower is left as it is."""
    return _map_text_tower(state, text_cfg, hf_text_to_paddlenlp)


def text_tower_to_transformers(state: State, text_cfg: Any) -> State:
    """The inverse of text_tower_from_transformers."""
    return _map_text_tower(state, text_cfg, paddlenlp_to_hf_text)
