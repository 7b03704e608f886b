"""Loss plug-in point: `config.loss` names an entry of LOSSES, which the trainer builds and feeds the
model's outputs (open_clip's `create_loss`, chosen by the model's config rather than by flags alone).

A new loss is one module plus one entry: `builder(config, contrastive: ClipLoss, **options)` returning
an object with `loss_parts(outputs, batch_input_ids=None) -> {name: loss}` (summing to the training
loss) and `contrastive_loss(image_features, text_features, logit_scale)` (the part gradient
accumulation recomputes over the joined micro-batches; None when it has no weight). `options` are
the family's flags by name; one the family does not take is an error naming it.
"""

from typing import Callable, Dict, Optional

import paddle

from .coca.loss import CoCaLoss
from .loss import ClipLoss


def _check_options(config, options: Dict, accepted=()) -> None:
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise ValueError(f"{', '.join('--' + name for name in unknown)}: not an option of the {config.loss!r} loss "
                         f"that model {config.name or config.model_type} trains with" +
                         (f" (it takes {', '.join('--' + name for name in accepted)})" if accepted else ""))


def _clip_loss(config, contrastive: ClipLoss, **options) -> ClipLoss:
    _check_options(config, options)
    return contrastive


def _coca_loss(config, contrastive: ClipLoss, **options) -> CoCaLoss:
    _check_options(config, options, ("coca_caption_loss_weight", "coca_contrastive_loss_weight"))
    return CoCaLoss(caption_weight=options.get("coca_caption_loss_weight", 2.0),
                    contrastive_weight=options.get("coca_contrastive_loss_weight", 1.0),
                    pad_id=config.text_cfg.pad_id, clip_loss=contrastive)


LOSSES: Dict[str, Callable] = {"clip": _clip_loss, "coca": _coca_loss}


def build_loss(config, local_loss: bool = False, gather_with_grad: bool = False,
               options: Optional[Dict[str, float]] = None):
    """The loss `config.loss` names; `local_loss` / `gather_with_grad` as ClipLoss takes them (the
    contrastive part of every family), `options` the family's own settings by flag name."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss {config.loss!r} (in the model's config) is not a known loss; known: "
                         f"{', '.join(sorted(LOSSES))}")
    contrastive = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
    return LOSSES[config.loss](config, contrastive, **(options or {}))


def training_loss(loss_fn, outputs, batch_input_ids=None, **pair_keys):
    """The sum of `loss_fn`'s parts of a model's `outputs` (with the batch's pair keys, data.pair_keys):
    what the trainer minimises."""
    return paddle.add_n(list(loss_fn.loss_parts(outputs, batch_input_ids, **pair_keys).values()))
