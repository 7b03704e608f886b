"""Bare timm image-tower checkpoints: `timm.create_model(name).state_dict()`, e.g. SigLIP's ViTs
(`vit_base_patch16_siglip_224`: patch_embed, pos_embed, blocks.N, norm, attn_pool).

open_clip nests the same trunk under `visual.trunk.`, so its mapping (open_clip.py) reads them. A timm
checkpoint holds an image tower alone: `convert --source timm` fills the model's image tower from it and
leaves everything else as the model initialises it (IMAGE_TOWER_ONLY in this package).
"""

from .common import State, strip_wrappers
from .open_clip import rename_open_clip


def rename_timm(state: State) -> State:
    """timm ViT / Eva state dict -> paddlemix `visual.*` names (torch layout)."""
    return rename_open_clip({f"visual.trunk.{key}": value for key, value in strip_wrappers(state).items()})
