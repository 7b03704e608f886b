"""transformers' BERT-family text models (BERT, RoBERTa, XLM-RoBERTa, ERNIE) <-> PaddleNLP's parameter names.

PaddleNLP builds BERT, RoBERTa and ERNIE from paddle.nn.TransformerEncoder, with its names; its
XLM-RoBERTa keeps transformers' names. (PaddleNLP's own `_get_name_mappings` are not used: in
paddlenlp 3.0.0b4 RobertaModel's maps the pooler to `roberta.pooler.*`, BertModel's and
XLMRobertaModel's fail on a config without `architectures`, and ErnieModel has none.) Names are
encoder-relative and in torch's layout; Linear weights are transposed by the shared step.
"""

import re
from typing import List, Tuple

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
