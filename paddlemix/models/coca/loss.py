"""CoCa's loss: the contrastive ClipLoss plus the captioning cross-entropy, each weighted."""

from typing import Dict, Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..loss import ClipLoss


class CoCaLoss(nn.Layer):
    """`contrastive_weight` x ClipLoss (with its local_loss / gather_with_grad options) and
    `caption_weight` x the token cross-entropy of the caption logits, padding (`pad_id`) ignored
    (open_clip's CoCaLoss; `--coca_contrastive_loss_weight`, `--coca_caption_loss_weight`)."""

    def __init__(self, caption_weight: float = 2.0, contrastive_weight: float = 1.0, pad_id: int = 0,
                 clip_loss: Optional[ClipLoss] = None):
        super().__init__()
        self.caption_weight = caption_weight
        self.contrastive_weight = contrastive_weight
        self.pad_id = pad_id
        self.clip_loss = clip_loss or ClipLoss()

    def forward(
        self,
        image_features: paddle.Tensor,
        text_features: paddle.Tensor,
        logit_scale: paddle.Tensor,
        logits: paddle.Tensor,
        labels: paddle.Tensor,
        caption_tokens: Optional[int] = None,
        **pair_keys: paddle.Tensor,
    ) -> Dict[str, paddle.Tensor]:
        """{"contrastive_loss", "caption_loss"}, each already weighted.

        logits [batch, length, vocab] and labels [batch, length] of this batch. caption_tokens: the
        number of non-pad labels the cross-entropy is averaged over; by default those in `labels`.
        A micro-batch of a larger batch (gradient accumulation) passes the larger batch's count, so
        the micro-batches' caption losses sum to the larger batch's. pair_keys: ClipLoss's image_keys /
        caption_keys.
        """
        parts = {}
        if self.contrastive_weight:
            parts["contrastive_loss"] = self.contrastive_weight * self.clip_loss(image_features, text_features,
                                                                                logit_scale, **pair_keys)
        token_losses = F.cross_entropy(logits.astype("float32"), labels.unsqueeze(-1), ignore_index=self.pad_id,
                                       reduction="sum")
        if caption_tokens is None:
            caption_tokens = int((labels != self.pad_id).sum())
        parts["caption_loss"] = self.caption_weight * token_losses / max(caption_tokens, 1)
        return parts

    def probabilities(self, image_features, text_features, scalars: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """The contrastive loss's probabilities of texts for images (ClipLoss.probabilities)."""
        return self.clip_loss.probabilities(image_features, text_features, scalars)

    def contrastive_loss(self, image_features, text_features, scalars: Dict[str, paddle.Tensor],
                         **pair_keys) -> Optional[paddle.Tensor]:
        """The weighted contrastive part alone (`scalars`: the model's logit_scale); None where its weight is 0."""
        if not self.contrastive_weight:
            return None
        return self.contrastive_weight * self.clip_loss.contrastive_loss(image_features, text_features, scalars,
                                                                         **pair_keys)

    def loss_parts(self, outputs: Dict[str, paddle.Tensor], batch_input_ids: Optional[paddle.Tensor] = None,
                   **pair_keys: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """The weighted losses of CoCa's `outputs`; `batch_input_ids`: the whole batch these outputs are a
        micro-batch of (gradient accumulation), whose caption tokens the cross-entropy is averaged over."""
        tokens = None if batch_input_ids is None else int((batch_input_ids[:, 1:] != self.pad_id).sum())
        return self(outputs["image_features"], outputs["text_features"], outputs["logit_scale"],
                    outputs["logits"], outputs["labels"], caption_tokens=tokens, **pair_keys)
