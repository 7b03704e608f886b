"""open_clip's key names that other layouts share (EVA-CLIP's text tower is open_clip's)."""

from typing import List, Tuple

# open_clip's CLIP keeps its text modules at the top level; paddlemix nests them in `text.`
# (open_clip's CustomTextCLIP, used for EVA, already does).
OPEN_CLIP_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
OPEN_CLIP_RENAMES: List[Tuple[str, str]] = [
    (r"(.*resblocks\.\d+\.attn)\.in_proj_weight", r"\1.qkv.weight"),  # MultiheadAttention's packed q|k|v
    (r"(.*resblocks\.\d+\.attn)\.in_proj_bias", r"\1.qkv.bias"),
]

