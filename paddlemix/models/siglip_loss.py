"""Sigmoid image-text loss (SigLIP, Zhai et al. 2023, arXiv:2303.15343), as open_clip's SigLipLoss.

Every (image i, text j) pair of the global batch is a binary problem: the loss is
-log sigmoid(z_ij (s <x_i, y_j> + b)), z = +1 where j is i's caption and -1 elsewhere, summed over
the texts and averaged over the images. Each rank holds its own images and passes its texts around
the ring of ranks, so it never holds the global batch's features at once, and it computes the
logits of one chunk of texts at a time, recomputing them in the backward pass: peak memory grows
with local batch x chunk, not with the global batch squared.
"""

from typing import Dict, List, Optional, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddlemix.utils.distributed import (
    all_gather_rows,
    all_gather_with_grad,
    gather_row_counts,
    get_rank,
    get_world_size,
    neighbour_exchange,
    neighbour_exchange_bidir,
)

# How the texts reach every rank: `bidir` passes them both ways around the ring (world_size / 2 steps),
# `shift` one way (world_size - 1 steps), `gather` all-gathers them (for backends without point-to-point
# messages). All three give the same loss and gradients; open_clip's modes of the same names.
EXCHANGES = ("bidir", "shift", "gather")
DEFAULT_CHUNK = 1024  # texts per logits chunk: [local images, chunk] floats at a time


def _excluded(row_keys: Optional[paddle.Tensor], column_keys: Optional[paddle.Tensor]) -> Optional[paddle.Tensor]:
    """Bool [rows, columns]: the pairs that share an image or a caption key (int64 [rows, kinds] and
    [columns, kinds]); None without keys."""
    if row_keys is None:
        return None
    return (row_keys.unsqueeze(1) == column_keys.unsqueeze(0)).any(axis=-1)


class _SigmoidPairLoss(paddle.autograd.PyLayer):
    """sum over (i, j) of -log sigmoid(z_ij (scale <x_i, y_j> + bias)), the logits made and dropped one
    chunk of columns at a time, in the forward and again in the backward pass. The scale multiplies the
    images once, and the gradients' scalars the [rows, D] results, not every chunk of logits."""

    @staticmethod
    def forward(ctx, image, text, scale, bias, diagonal_positive, row_keys, column_keys, chunk):
        ctx.save_for_backward(image, text, scale, bias)
        ctx.options = (diagonal_positive, row_keys, column_keys, chunk)
        ctx.key_inputs = sum(keys is not None for keys in (row_keys, column_keys))  # tensors without gradients
        ctx.differentiable = [not tensor.stop_gradient for tensor in (image, text, scale, bias)]
        total = paddle.zeros([], dtype=image.dtype)
        for _, logits, positive, kept in _chunks(scale * image, text, bias, *ctx.options):
            # -log sigmoid(z l) = softplus(-z l)
            terms = F.softplus(logits if positive is None else paddle.where(positive, -logits, logits))
            total = total + (terms if kept is None else paddle.where(kept, terms, paddle.zeros_like(terms))).sum()
        return total

    @staticmethod
    def backward(ctx, grad):
        image, text, scale, bias = ctx.saved_tensor()
        scaled_image = scale * image
        slope_times_text = paddle.zeros_like(image)  # sum over j of dL/dl_ij y_j
        d_text_chunks: List[paddle.Tensor] = []
        d_bias = paddle.zeros([], dtype=image.dtype)
        for columns, logits, positive, kept in _chunks(scaled_image, text, bias, *ctx.options):
            # d/dl of -log sigmoid(+l) is sigmoid(l) - 1, of -log sigmoid(-l) is sigmoid(l)
            slope = F.sigmoid(logits)
            if positive is not None:
                slope = slope - positive.astype(logits.dtype)
            if kept is not None:
                slope = paddle.where(kept, slope, paddle.zeros_like(slope))
            slope_times_text = slope_times_text + slope @ columns
            d_text_chunks.append(slope.T @ scaled_image)
            d_bias = d_bias + slope.sum()
        gradients = (scale * grad * slope_times_text, grad * paddle.concat(d_text_chunks),
                     (grad * (image * slope_times_text).sum()).reshape(scale.shape), (grad * d_bias).reshape(bias.shape))
        # Paddle wants None for an input that takes no gradient (a detached scale, the keys)
        return (*[g if wanted else None for g, wanted in zip(gradients, ctx.differentiable)], *[None] * ctx.key_inputs)


def _chunks(scaled_image, text, bias, diagonal_positive, row_keys, column_keys, chunk):
    """(texts [c, D], logits [rows, c], positive [rows, c], kept [rows, c]) per chunk of c texts; positive
    is None where every pair is negative, kept None where every pair counts."""
    row_index = paddle.arange(scaled_image.shape[0]).unsqueeze(1)
    for start in range(0, text.shape[0], chunk):
        columns = text[start:start + chunk]
        logits = paddle.matmul(scaled_image, columns, transpose_y=True) + bias
        positive = None
        if diagonal_positive:
            positive = row_index == paddle.arange(start, start + columns.shape[0]).unsqueeze(0)
        excluded = _excluded(row_keys, None if column_keys is None else column_keys[start:start + chunk])
        kept = None
        if excluded is not None:
            kept = paddle.logical_not(excluded) if positive is None else paddle.logical_or(
                positive, paddle.logical_not(excluded))
        yield columns, logits, positive, kept


def sigmoid_pair_loss(image: paddle.Tensor, text: paddle.Tensor, scale: paddle.Tensor, bias: paddle.Tensor,
                      diagonal_positive: bool, row_keys: Optional[paddle.Tensor] = None,
                      column_keys: Optional[paddle.Tensor] = None, chunk: int = DEFAULT_CHUNK) -> paddle.Tensor:
    """Summed sigmoid loss of images [rows, D] against texts [columns, D]: pair (i, i) is positive when
    `diagonal_positive` (the texts are the images' own captions), every other pair negative; pairs whose
    int64 keys ([rows, kinds], [columns, kinds]) match are left out. scale, bias: [1]."""
    return _SigmoidPairLoss.apply(image, text, scale.reshape([1]), bias.reshape([1]), diagonal_positive,
                                  row_keys, column_keys, chunk)


class SigLipLoss(nn.Layer):
    """The sigmoid loss of this rank's images against the global batch's texts.

    Each rank's loss is its images' share: the sum of its rows' pair losses over the global number
    of images, times world_size, so that the mean over ranks (DataParallel's gradient average) is
    the loss of one process on the global batch, even where ranks hold different numbers of pairs.
    With equal batches that is open_clip's sum over the local images / local batch size.
    Given the batch's `image_keys` / `caption_keys` (data.pair_keys), pairs that share an image or a
    caption, other than the matching pair, are left out of the loss: neither positive nor negative.
    """

    def __init__(self, exchange: str = "bidir", chunk: int = DEFAULT_CHUNK, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        super().__init__()
        if exchange not in EXCHANGES:
            raise ValueError(f"--siglip_exchange {exchange!r}: choose one of {', '.join(EXCHANGES)}")
        if chunk < 1:
            raise ValueError(f"--siglip_chunk {chunk}: the number of texts per logits chunk must be at least 1")
        self.exchange = exchange
        self.chunk = chunk
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def forward(self, image_features: paddle.Tensor, text_features: paddle.Tensor, logit_scale: paddle.Tensor,
                logit_bias: paddle.Tensor, output_dict: bool = False, image_keys: Optional[paddle.Tensor] = None,
                caption_keys: Optional[paddle.Tensor] = None):
        """image_features, text_features: [N, D] this rank's normalised pairs; logit_scale: the
        exponentiated scale; logit_bias: the bias (both [1] or scalars); keys: optional int64 [N]."""
        counts = [image_features.shape[0]] if self.world_size == 1 else gather_row_counts(image_features.shape[0])
        own_keys = _stacked_keys(image_keys, caption_keys)
        all_keys = own_keys if own_keys is None or self.world_size == 1 else all_gather_rows(own_keys)
        offsets = [sum(counts[:rank]) for rank in range(len(counts))]

        def block_loss(texts: paddle.Tensor, owner: int) -> paddle.Tensor:
            column_keys = None if all_keys is None else all_keys[offsets[owner]:offsets[owner] + counts[owner]]
            return sigmoid_pair_loss(image_features, texts, logit_scale, logit_bias, owner == self.rank, own_keys,
                                     column_keys, self.chunk)

        total = block_loss(text_features, self.rank)
        if self.world_size > 1:
            total = total + self._other_ranks_losses(text_features, counts, offsets, block_loss)
        loss = total * (self.world_size / sum(counts))
        return {"contrastive_loss": loss} if output_dict else loss

    def _other_ranks_losses(self, text_features, counts: Sequence[int], offsets: Sequence[int],
                            block_loss) -> paddle.Tensor:
        rank, world = self.rank, self.world_size
        if self.exchange == "gather":
            everything = all_gather_with_grad(text_features)
            return paddle.add_n([block_loss(everything[offsets[owner]:offsets[owner] + counts[owner]], owner)
                                 for owner in range(world) if owner != rank])
        losses = []
        left, right = (rank - 1) % world, (rank + 1) % world
        if self.exchange == "shift":
            travelling, owner = text_features, rank
            for _ in range(world - 1):  # each step: what came from the left goes on to the right
                owner = (owner - 1) % world
                travelling = neighbour_exchange(travelling, right, left, counts[owner])
                losses.append(block_loss(travelling, owner))
            return paddle.add_n(losses)
        to_left = to_right = text_features  # the texts travelling left and right from here
        steps, remainder = divmod(world - 1, 2)
        for step in range(1, steps + 1):  # step k brings rank + k's texts from the right, rank - k's from the left
            from_right, from_left = (rank + step) % world, (rank - step) % world
            to_left, to_right = neighbour_exchange_bidir(to_left, to_right, counts[from_left], counts[from_right])
            losses += [block_loss(to_left, from_right), block_loss(to_right, from_left)]
        if remainder:  # an even world size: the opposite rank's texts, one way
            owner = (rank - steps - 1) % world
            losses.append(block_loss(neighbour_exchange(to_right, right, left, counts[owner]), owner))
        return paddle.add_n(losses)

    @staticmethod
    def probabilities(image_features: paddle.Tensor, text_features: paddle.Tensor,
                      scalars: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """[N, M] probability that each of M texts matches each of N images, as this loss trains them:
        sigmoid(scale <x, y> + bias), each pair on its own (rows need not sum to 1)."""
        return F.sigmoid(scalars["logit_scale"] * image_features @ text_features.T + scalars["logit_bias"])

    def contrastive_loss(self, image_features, text_features, scalars: Dict[str, paddle.Tensor], image_keys=None,
                         caption_keys=None) -> paddle.Tensor:
        """The loss of normalised features, with the model's scalar outputs (`scalars`: logit_scale and
        logit_bias). The trainer's gradient accumulation joins the micro-batches' features and pair
        keys and asks for this part alone."""
        if scalars.get("logit_bias") is None:
            raise ValueError("the sigmoid loss needs a model with a logit_bias: one whose config sets "
                             "init_logit_bias (SigLIP's), or any CLIP trained with --loss siglip, which adds one")
        return self(image_features, text_features, scalars["logit_scale"], scalars["logit_bias"],
                    image_keys=image_keys, caption_keys=caption_keys)

    def loss_parts(self, outputs: Dict[str, paddle.Tensor], batch_input_ids: Optional[paddle.Tensor] = None,
                   image_keys: Optional[paddle.Tensor] = None,
                   caption_keys: Optional[paddle.Tensor] = None) -> Dict[str, paddle.Tensor]:
        """{"contrastive_loss": the sigmoid loss of a model's `outputs`}, as ClipLoss.loss_parts."""
        return {"contrastive_loss": self.contrastive_loss(outputs["image_features"], outputs["text_features"],
                                                          outputs, image_keys, caption_keys)}


def _stacked_keys(image_keys: Optional[paddle.Tensor], caption_keys: Optional[paddle.Tensor]):
    keys = [key.astype("int64").reshape([-1]) for key in (image_keys, caption_keys) if key is not None]
    return paddle.stack(keys, axis=1) if keys else None
