"""What a tower declares about its parameters for the trainer: which are exempt from weight decay,
and which stay trainable when it is locked (open_clip's `lock_image_tower` / `lock_text_tower`)."""

from typing import Iterable, Sequence, Set, Union

import paddle
import paddle.nn as nn

Group = Union[nn.Layer, paddle.Tensor, Sequence]


def vectors_and(layer: nn.Layer, names: Iterable[str] = ()) -> Set[str]:
    """Names of `layer`'s parameters of at most one dimension (biases, norm weights, layer scales,
    logit_scale) plus those in `names` (position and class embeddings): open_clip's and timm's default
    exemptions from weight decay."""
    names = set(names)
    return {name for name, param in layer.named_parameters() if len(param.shape) <= 1 or name in names}


def _set_trainable(group: Group, trainable: bool) -> None:
    if isinstance(group, paddle.Tensor):
        group.stop_gradient = not trainable
    elif isinstance(group, nn.Layer):
        for param in group.parameters():
            param.stop_gradient = not trainable
    else:
        for member in group:
            _set_trainable(member, trainable)


def lock_groups(groups: Sequence[Group], unlocked: int) -> None:
    """Freeze every group (layers, parameters, or lists of them), then unfreeze the last `unlocked`."""
    _set_trainable(groups, False)
    if unlocked > 0:
        _set_trainable(groups[-unlocked:], True)
