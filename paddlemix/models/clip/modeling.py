"""CLIP (Radford et al. 2021) as in open_clip: ViT image tower + causal text tower + logit scale."""

from typing import Dict, Optional, Set

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..configuration import CLIPConfig
from ..layers.parallel import ensure_tensor_parallel_available
from ..modeling_utils import PretrainedMixin
from ..towers import build_text_tower
from .towers import VisionTransformer


class CLIP(PretrainedMixin, nn.Layer):
    """Contrastive image-text model.

    `model(image=..., input_ids=...)` returns a dict with normalised `image_features` and
    `text_features` [batch, embed_dim], the exponentiated `logit_scale` and, where the config sets
    init_logit_bias (SigLIP), the `logit_bias`. The model owns no loss:
    the trainer builds the one `config.loss` names (models.loss_registry.build_loss) and feeds it these
    outputs.
    """

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig):
        super().__init__()
        ensure_tensor_parallel_available(config.tensor_parallel_degree)
        self.config = config
        degree = config.tensor_parallel_degree
        self.visual = VisionTransformer(config.vision_cfg, config.embed_dim, config.quick_gelu, degree)
        self.text = build_text_tower(config.text_cfg, config.embed_dim, config.quick_gelu, degree)
        # shape [1] as in PaddleMIX (open_clip's is 0-d): Paddle's sharding optimizer cannot partition 0-d tensors
        self.logit_scale = self.create_parameter(
            [1], default_initializer=nn.initializer.Constant(config.init_logit_scale)
        )
        self.logit_bias = None
        if config.init_logit_bias is not None:
            self.add_logit_bias(config.init_logit_bias)

    def add_logit_bias(self, value: float) -> None:
        """A learned logit bias [1] starting at `value`, which the sigmoid loss adds to every logit
        (open_clip's CLIP has one where init_logit_bias is set); the config records it."""
        self.config.init_logit_bias = value
        self.logit_bias = self.create_parameter([1], default_initializer=nn.initializer.Constant(value))

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def set_recompute(self, enable: bool = True) -> None:
        """Recompute block activations in backward (activation memory ~ one block per tower)."""
        self.visual.set_recompute(enable)
        self.text.set_recompute(enable)

    def no_weight_decay(self) -> Set[str]:
        """Names of the parameters exempt from weight decay, as each tower declares them, and the logit
        scale and bias."""
        scalars = {"logit_scale"} | ({"logit_bias"} if self.logit_bias is not None else set())
        return scalars | {f"{tower}.{name}" for tower in ("visual", "text")
                          for name in getattr(self, tower).no_weight_decay()}

    def encode_image(self, image: paddle.Tensor, normalize: bool = False) -> paddle.Tensor:
        """image: [batch, 3, H, W] normalised -> [batch, embed_dim]."""
        features = self.visual(image)
        return F.normalize(features, axis=-1) if normalize else features

    def encode_text(self, input_ids: paddle.Tensor, normalize: bool = False) -> paddle.Tensor:
        """input_ids: [batch, length] int64 -> [batch, embed_dim]."""
        features = self.text(input_ids)
        return F.normalize(features, axis=-1) if normalize else features

    def scale(self) -> paddle.Tensor:
        """exp(logit_scale) [1], with logit_scale clamped to [0, max_logit_scale] (ln 100 by default)."""
        return self.logit_scale.clip(0.0, self.config.max_logit_scale).exp()

    def scalars(self) -> Dict[str, paddle.Tensor]:
        """The learned scalars that turn similarities into logits: exp(logit_scale) and, where the model has
        one, logit_bias (what a loss's `probabilities` takes)."""
        scalars = {"logit_scale": self.scale()}
        if self.logit_bias is not None:
            scalars["logit_bias"] = self.logit_bias
        return scalars

    def forward(
        self,
        image: Optional[paddle.Tensor] = None,
        input_ids: Optional[paddle.Tensor] = None,
    ) -> Dict[str, paddle.Tensor]:
        outputs = {"logit_scale": self.scale()}
        if self.logit_bias is not None:
            # a copy, so that the parameter has one use in the graph: DataParallel's reducer refuses a
            # parameter whose gradient arrives from several ops (the loss uses the bias once per block)
            outputs["logit_bias"] = self.logit_bias.clone()
        if image is not None:
            outputs["image_features"] = self.encode_image(image, normalize=True)
        if input_ids is not None:
            outputs["text_features"] = self.encode_text(input_ids, normalize=True)
        return outputs
