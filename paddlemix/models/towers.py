"""Text-tower plug-in point: `text_cfg["kind"]` names a (config dataclass, tower class) pair here.

A new text tower family is one module holding its config dataclass and its `nn.Layer`, plus one entry
in TEXT_TOWERS (open_clip's `_build_text_tower` with a registry instead of branches). Entries are
"module:attribute" strings, imported on first use, so that a CLIP model never imports PaddleNLP.

Every tower is built as `Tower(cfg, output_dim, quick_gelu, tensor_parallel_degree)` and answers the
trainer's questions itself, rather than the trainer matching parameter names:
    forward(input_ids [batch, length] int64) -> features [batch, output_dim]
    context_length, pad_token_id
    num_layers; layer_id(tower-relative parameter name) -> 0 (stem) .. num_layers + 1 (head)
    no_weight_decay() -> tower-relative names of the parameters exempt from weight decay
    set_recompute(enable); lock(unlocked_layers, freeze_layer_norm)
"""

import importlib
from typing import Any, Dict, Tuple

DEFAULT_TEXT_KIND = "clip"
TEXT_TOWERS: Dict[str, Tuple[str, str]] = {
    # OpenAI CLIP's causal transformer (CLIP, EVA-CLIP, CoCa)
    "clip": ("paddlemix.models.configuration:TextConfig", "paddlemix.models.clip.towers:TextTransformer"),
    # a pretrained language model from paddlenlp.transformers (RoBERTa, XLM-RoBERTa, BERT, ERNIE)
    "paddlenlp": ("paddlemix.models.clip.paddlenlp_tower:PaddleNLPTextConfig",
                  "paddlemix.models.clip.paddlenlp_tower:PaddleNLPTextTower"),
}


def _load(reference: str) -> Any:
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


def _entry(kind: str, where: str) -> Tuple[str, str]:
    if kind not in TEXT_TOWERS:
        raise ValueError(f"{where}: unknown text tower kind {kind!r}; known kinds: {', '.join(sorted(TEXT_TOWERS))}")
    return TEXT_TOWERS[kind]


def text_config_class(kind: str, where: str = "text_cfg") -> type:
    """The config dataclass of text tower `kind`."""
    return _load(_entry(kind, where)[0])


def build_text_tower(cfg, output_dim: int, quick_gelu: bool = False, tensor_parallel_degree: int = 1):
    """The text tower `cfg.kind` names, projecting to `output_dim`."""
    tower_class = _load(_entry(cfg.kind, "text_cfg")[1])
    return tower_class(cfg, output_dim, quick_gelu, tensor_parallel_degree)
