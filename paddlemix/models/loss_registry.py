"""Loss plug-in point: `config.loss` names an entry of LOSSES, which the trainer builds and feeds the
model's outputs (open_clip's `create_loss`, chosen by the model's config rather than by flags alone).

A new loss is one module plus one entry: `builder(config, contrastive: ClipLoss, **options)` returning
an object with `loss_parts(outputs, batch_input_ids=None) -> {name: loss}` (summing to the training
loss) and `contrastive_loss(image_features, text_features, scalars)` (the part gradient
accumulation recomputes over the joined micro-batches, `scalars` holding the model's logit_scale and,
where it has one, logit_bias; None when it has no weight). `options` are
the family's flags by name; one the family does not take is an error naming it.
"""

from typing import Callable, Dict, Optional

import paddle

from .coca.loss import CoCaLoss
from .loss import ClipLoss
from .siglip_loss import DEFAULT_CHUNK, SigLipLoss


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


def _siglip_loss(config, contrastive: ClipLoss, **options) -> SigLipLoss:
    _check_options(config, options, ("siglip_exchange", "siglip_chunk"))
    if contrastive.local_loss or contrastive.gather_with_grad:
        raise ValueError("--local_loss / --gather_with_grad choose how the softmax loss gathers features; the sigmoid "
                         "loss always computes each rank's own rows, exactly: choose its exchange with "
                         "--siglip_exchange bidir|shift|gather")
    return SigLipLoss(exchange=options.get("siglip_exchange", "bidir"),
                      chunk=options.get("siglip_chunk", DEFAULT_CHUNK))


LOSSES: Dict[str, Callable] = {"clip": _clip_loss, "coca": _coca_loss, "siglip": _siglip_loss}
# Losses of the two towers' features and the model's logit scale (and bias) alone: a model that trains
# with one may train with another (`--loss`). The others need more of the model (CoCa's captions).
FEATURE_LOSSES = ("clip", "siglip")
SIGLIP_INIT_LOGIT_BIAS = -10.0  # the logit bias --loss siglip adds to a model without one (SigLIP's init)


def switch_loss(model, loss: str) -> None:
    """Make `model` train with `loss` (a FEATURE_LOSSES name) instead of its config's: the sigmoid loss
    gets a logit_bias where the model has none (SIGLIP_INIT_LOGIT_BIAS); under the softmax loss a
    logit_bias has no gradient, so it is frozen (a parameter without a gradient would stall
    DataParallel's reduction)."""
    config = model.config
    for name, flag in ((config.loss, f"the model's loss {config.loss!r}"), (loss, f"--loss {loss}")):
        if name not in FEATURE_LOSSES:
            raise ValueError(f"{flag}: --loss switches only between the losses of the features alone "
                             f"({', '.join(FEATURE_LOSSES)}); model {config.name or config.model_type} keeps its own")
    config.loss = loss
    if loss == "siglip" and model.logit_bias is None:
        model.add_logit_bias(SIGLIP_INIT_LOGIT_BIAS)
    if model.logit_bias is not None:
        model.logit_bias.stop_gradient = loss != "siglip"


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
