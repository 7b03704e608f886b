"""Foreign checkpoint layouts -> paddlemix state dicts (numpy arrays, paddlemix names and layout).

Each source (one module here, one entry in SOURCES) renames keys to paddlemix's names, keeping
torch's [out, in] Linear layout; shared steps then give a PaddleNLP text tower PaddleNLP's names
(sources keep transformers' names there) and move Linear weights to Paddle's [in, out].
"""

from typing import Any, Callable, Dict, FrozenSet, Optional

from .common import State, torch_to_paddle_layout
from .eva_clip import rename_eva_clip
from .hf import rename_hf
from .open_clip import rename_open_clip
from .paddlemix import rename_paddlemix
from .paddlenlp_names import text_tower_from_transformers
from .timm import rename_timm

SOURCES: Dict[str, Callable[[State], State]] = {
    "open_clip": rename_open_clip,
    "eva_clip": rename_eva_clip,
    "hf": rename_hf,
    "paddlemix": rename_paddlemix,
    "timm": rename_timm,
}
# Sources whose checkpoints hold an image tower alone: they fill the model's `visual.*` weights only.
IMAGE_TOWER_ONLY: FrozenSet[str] = frozenset({"timm"})


def convert_state(source: str, state: State, text_cfg: Optional[Any] = None) -> State:
    """`source` checkpoint (numpy) -> paddlemix state dict in Paddle layout, for a model whose text
    tower is `text_cfg` (needed for a PaddleNLP text tower, whose names depend on its encoder)."""
    if source not in SOURCES:
        raise ValueError(f"--source {source!r} is not supported; choose from {', '.join(sorted(SOURCES))}")
    return torch_to_paddle_layout(text_tower_from_transformers(SOURCES[source](state), text_cfg))
