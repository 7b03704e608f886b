"""`get_tokenizer(model_or_name)`: the tokenizer a model was trained with, named by its config.

`text_cfg.tokenizer` names an entry of TOKENIZERS (open_clip's `get_tokenizer`, with a registry in
place of branches): "clip" is CLIP's byte-level BPE, which ships with paddlemix; "hf" reads the
RoBERTa / XLM-RoBERTa / BERT tokenizer files of the model's folder (`hf_tokenizer.HFTokenizer`);
"siglip" and "siglip2" read SigLIP's (T5's SentencePiece vocabulary) and SigLIP 2's (Gemma's) from it,
cleaned as open_clip's SigLIP configs say (clean="canonicalize").
Every consumer (collator, zero-shot classifier, retrieval, processor, CLI, caption decoding) asks
here; nothing falls back to a process-wide tokenizer.

A tokenizer is called as `tokenizer(texts) -> int64 [N, context_length]`, and has `encode`, `decode`,
`pad_token_id`, `context_length` and `save_pretrained(directory)`.
"""

from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from ..models.auto import AutoConfig
from ..models.hub import model_cache_dir
from .tokenizer import SimpleTokenizer


def _clip_tokenizer(config, context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def _hf_tokenizer(config, context_length: int):
    from .hf_tokenizer import HFTokenizer  # the `tokenizers` package, needed by these models alone

    return HFTokenizer.from_folder(tokenizer_folder(config), context_length)


def _siglip_tokenizer(hub_repo: str, families: Tuple[str, ...], files: str, config, context_length: int):
    """SigLIP's tokenizer files from the model folder, cleaned by canonicalize (open_clip's SigLIP configs'
    tokenizer_kwargs); a folder without them names the hub repo open_clip reads them from."""
    from .hf_tokenizer import HFTokenizer

    folder = tokenizer_folder(config)
    try:
        return HFTokenizer.from_folder(folder, context_length, clean="canonicalize", families=families)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. This model's tokenizer is open_clip's {hub_repo}; get its files with "
                                f"`huggingface-cli download {hub_repo} {files} --local-dir {folder}`") from err


# text_cfg.tokenizer -> builder(config, context_length). SigLIP's hub repos and files are open_clip 3.3.0's
# text_cfg.hf_tokenizer_name (model_configs/ViT-B-16-SigLIP.json, ViT-B-16-SigLIP2.json).
TOKENIZERS: Dict[str, Callable] = {
    "clip": _clip_tokenizer,
    "hf": _hf_tokenizer,
    "siglip": partial(_siglip_tokenizer, "timm/ViT-B-16-SigLIP", ("t5", "siglip"),
                      "spiece.model tokenizer.json tokenizer_config.json special_tokens_map.json"),
    "siglip2": partial(_siglip_tokenizer, "timm/ViT-B-16-SigLIP2", ("gemma",),
                       "tokenizer.json tokenizer_config.json special_tokens_map.json"),
}


def tokenizer_folder(config) -> Path:
    """The folder holding the tokenizer files of `config`'s model: the model directory it was read
    from, or for a registry name its cache folder `$PPMIX_HOME/models/<name>/`."""
    source = config.name_or_path or config.name
    if not source:
        raise ValueError("this model's tokenizer files are read from its model folder, and its config was not "
                         "read from one: load it with AutoConfig/AutoModel.from_pretrained(<folder or name>)")
    folder = Path(source).expanduser()
    return folder if folder.is_dir() else model_cache_dir(source)


def _config_of(model_or_name):
    if isinstance(model_or_name, (str, Path)):
        return AutoConfig.from_pretrained(model_or_name)
    return getattr(model_or_name, "config", model_or_name)


def get_tokenizer(model_or_name: Union[str, Path, object], context_length: Optional[int] = None):
    """The tokenizer of a model, its config, a registry name or a model directory; rows of
    `context_length` tokens (default: the model's `text_cfg.context_length`)."""
    config = _config_of(model_or_name)
    kind = config.text_cfg.tokenizer
    if kind not in TOKENIZERS:
        raise ValueError(f"text_cfg.tokenizer {kind!r} is not a known tokenizer; known: {', '.join(sorted(TOKENIZERS))}")
    model_length = config.text_cfg.context_length
    if context_length is not None and context_length > model_length:
        raise ValueError(f"context_length {context_length} exceeds the model's {model_length} (text_cfg.context_length)")
    return TOKENIZERS[kind](config, context_length or model_length)
