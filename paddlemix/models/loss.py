"""Contrastive image-text loss (CLIP), with open_clip's options for multi-process batches."""

from typing import Dict, Optional, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddlemix.utils.distributed import (
    all_gather_local_grad,
    all_gather_rows,
    all_gather_with_grad,
    gather_row_counts,
    get_rank,
    get_world_size,
)


class ClipLoss(nn.Layer):
    """Symmetric cross-entropy between matching image and text features (open_clip's ClipLoss).

    With world_size > 1 the negatives come from the whole global batch:
      - local_loss=False: every rank computes the full [W*N, W*N] logits. With
        gather_with_grad the gathered gradients are all-reduced; without it each rank keeps
        the gradient of its own rows, scaled so DataParallel's averaging stays exact.
      - local_loss=True (requires gather_with_grad=True): each rank computes only its [N, W*N]
        rows; the per-rank losses average to the global loss.
    In every valid combination the gradients after DataParallel averaging equal those of a
    single process on the global batch.

    Given the batch's `image_keys` / `caption_keys` (data.pair_keys), two pairs that share an image
    or a caption are not negatives of each other: for every (i, j), i != j, of the global batch with
    equal image keys or equal caption keys, logit (i, j) leaves both softmaxes (it is set to -inf).
    COCO's ~5 captions per image would otherwise make an image its own negative.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = True,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        super().__init__()
        # Refused even in one process, so a bad config fails on the laptop, not the cluster.
        if local_loss and not gather_with_grad:
            raise ValueError(
                "ClipLoss(local_loss=True, gather_with_grad=False) cannot give exact gradients: "
                "each rank would drop the gradient of the other ranks' losses with respect to "
                "its own features, and no local rescaling recovers it. Set "
                "`--gather_with_grad true` (all-reduce the gathered gradients) or "
                "`--local_loss false` (compute the full global logits on every rank)."
            )
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self._labels = {}

    def get_ground_truth(self, place, num_logits: int, offset: int = 0) -> paddle.Tensor:
        """Int64 [num_logits] targets: row i matches column offset + i (with local_loss, offset is
        the number of rows on lower ranks)."""
        key = (str(place), num_logits, offset)
        if key in self._labels:
            return self._labels[key]
        labels = paddle.arange(offset, offset + num_logits, dtype="int64")
        if self.cache_labels:
            self._labels[key] = labels
        return labels

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """Return (logits_per_image, logits_per_text), each [rows, columns] as described above."""
        if self.world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T
            logits_per_text = logit_scale * text_features @ image_features.T
        else:
            gather = all_gather_with_grad if self.gather_with_grad else all_gather_local_grad
            all_image_features = gather(image_features)
            all_text_features = gather(text_features)
            if self.local_loss:
                logits_per_image = logit_scale * image_features @ all_text_features.T
                logits_per_text = logit_scale * text_features @ all_image_features.T
            else:
                logits_per_image = logit_scale * all_image_features @ all_text_features.T
                logits_per_text = logits_per_image.T

        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        return logits_per_image, logits_per_text

    def shared_pairs(self, keys: Sequence[paddle.Tensor], rows: int, offset: int) -> paddle.Tensor:
        """Bool [rows, global batch]: whether pair `offset + i` of the global batch shares a key of
        `keys` (this rank's int64 [N] tensors, gathered from every rank here) with pair j, j != offset + i:
        the logits the loss leaves out."""
        own = paddle.stack([key.astype("int64").reshape([-1]) for key in keys], axis=1)  # [N, kinds]
        columns = own if self.world_size == 1 else all_gather_rows(own)
        rows_keys = columns[offset:offset + rows]
        shared = (rows_keys.unsqueeze(1) == columns.unsqueeze(0)).any(axis=-1)
        positives = paddle.arange(offset, offset + rows).unsqueeze(1) == paddle.arange(columns.shape[0]).unsqueeze(0)
        return paddle.logical_and(shared, paddle.logical_not(positives))

    def forward(
        self,
        image_features: paddle.Tensor,
        text_features: paddle.Tensor,
        logit_scale: paddle.Tensor,
        logit_bias: Optional[paddle.Tensor] = None,
        output_dict: bool = False,
        image_keys: Optional[paddle.Tensor] = None,
        caption_keys: Optional[paddle.Tensor] = None,
    ):
        """Contrastive loss of this rank's batch.

        Args:
            image_features: [N, D] this rank's image embeddings (normalised by the model).
            text_features: [N, D] this rank's text embeddings, row i pairs with image row i.
            logit_scale: scalar, already exponentiated (the model passes exp(logit_scale)).
            logit_bias: optional scalar added to every logit.
            output_dict: return {"contrastive_loss": loss} instead of the scalar.
            image_keys, caption_keys: optional int64 [N], the identity of each row's image and caption
                (data.pair_keys); pairs sharing either are not negatives of each other (see the class doc).
                Both None: every other pair of the global batch is a negative.

        Returns:
            Scalar loss, the mean of image->text and text->image cross-entropy. With
            local_loss=True it is this rank's share, weighted by its share of the rows when
            ranks hold different numbers (a batch that lost bad samples), so that the mean over
            ranks is the global loss.
        """
        logits_per_image, logits_per_text = self.get_logits(
            image_features, text_features, logit_scale, logit_bias
        )
        rows, offset, weight = logits_per_image.shape[0], 0, 1.0
        if self.world_size > 1 and self.local_loss:
            counts = gather_row_counts(rows)
            offset, weight = sum(counts[: self.rank]), rows * self.world_size / sum(counts)
        keys = [key for key in (image_keys, caption_keys) if key is not None]
        if keys:
            shared = self.shared_pairs(keys, rows, offset)
            logits_per_image, logits_per_text = _without(logits_per_image, shared), _without(logits_per_text, shared)
        labels = self.get_ground_truth(image_features.place, rows, offset)
        total_loss = (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2
        if weight != 1.0:
            total_loss = total_loss * weight
        return {"contrastive_loss": total_loss} if output_dict else total_loss

    @staticmethod
    def probabilities(image_features: paddle.Tensor, text_features: paddle.Tensor,
                      scalars: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """[N, M] probability of each of M texts for each of N images (normalised features [N, D],
        [M, D]) as this loss trains them: a softmax over the texts of the scaled similarities."""
        return F.softmax(scalars["logit_scale"] * image_features @ text_features.T, axis=-1)

    def contrastive_loss(self, image_features, text_features, scalars: Dict[str, paddle.Tensor], image_keys=None,
                         caption_keys=None) -> paddle.Tensor:
        """The contrastive loss of normalised features, with the model's scalar outputs (`scalars`:
        logit_scale; a logit_bias there is left out, as open_clip's CLIP loss leaves it). The trainer's
        gradient accumulation joins the micro-batches' features and pair keys and asks for this part alone."""
        return self(image_features, text_features, scalars["logit_scale"], image_keys=image_keys,
                    caption_keys=caption_keys)

    def loss_parts(self, outputs: Dict[str, paddle.Tensor], batch_input_ids: Optional[paddle.Tensor] = None,
                   image_keys: Optional[paddle.Tensor] = None,
                   caption_keys: Optional[paddle.Tensor] = None) -> Dict[str, paddle.Tensor]:
        """The losses of a model's `outputs` by name; they sum to the training loss. (The one contrastive
        loss compares the features it is given, whatever batch `batch_input_ids` describes.) The pair
        keys are the batch's, row for row with the features (see forward)."""
        return {"contrastive_loss": self.contrastive_loss(outputs["image_features"], outputs["text_features"],
                                                          outputs, image_keys, caption_keys)}


def _without(logits: paddle.Tensor, left_out: paddle.Tensor) -> paddle.Tensor:
    """`logits` with the entries where `left_out` is True set to -inf: out of the softmax, no gradient."""
    return paddle.where(left_out, paddle.full_like(logits, float("-inf")), logits)
