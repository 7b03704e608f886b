"""CoCa (Yu et al. 2022, "Contrastive Captioners") as in open_clip: CLIP's towers with attentional
pooling and an appended CLS token, plus a captioning decoder that reads the image tokens."""

from typing import Dict, List, Optional, Set

import numpy as np
import paddle
import paddle.nn.functional as F

from ..clip.modeling import CLIP
from ..configuration import CoCaConfig
from ..layers import KVCache
from ..layers.parameter_roles import vectors_and
from .decoder import MultimodalDecoder
from .generation import GenerationConfig, generate_tokens


class CoCa(CLIP):
    """`model(image=..., input_ids=...)` returns CLIP's outputs plus the caption `logits` [batch,
    length - 1, vocab] of teacher forcing (position i predicts token i + 1, the `labels`), which
    CoCaLoss (built by the trainer) weighs against the contrastive loss.
    `generate(image)` writes captions (beam search or sampling, see GenerationConfig)."""

    config_class = CoCaConfig

    def __init__(self, config: CoCaConfig):
        if config.tensor_parallel_degree > 1:
            raise ValueError(
                f"--tensor_parallel_degree {config.tensor_parallel_degree}: CoCa's decoder and attentional pooler "
                "have no tensor-parallel layout; train CoCa with data parallelism and --sharding instead"
            )
        if config.text_cfg.kind != "clip":
            raise ValueError(f"CoCa's captioning decoder reads the token states of a 'clip' text tower; text_cfg.kind "
                             f"{config.text_cfg.kind!r} has none")
        super().__init__(config)
        vision, decoder = config.vision_cfg, config.multimodal_cfg
        token_width = config.embed_dim if vision.attentional_pool else vision.width
        if token_width != decoder.width:
            raise ValueError(
                f"{config.name or 'CoCa config'}: the decoder's width ({decoder.width}, multimodal_cfg.width) must "
                f"equal the width of the image tokens it reads ({token_width})"
            )
        if config.text_cfg.width != decoder.width:
            raise ValueError(f"text_cfg.width {config.text_cfg.width} must equal multimodal_cfg.width {decoder.width}")
        self.text_decoder = MultimodalDecoder(decoder, config.quick_gelu)

    @property
    def pad_id(self) -> int:
        return self.config.text_cfg.pad_id

    def set_recompute(self, enable: bool = True) -> None:
        super().set_recompute(enable)
        self.text_decoder.recompute = enable

    def no_weight_decay(self) -> Set[str]:
        return super().no_weight_decay() | {f"text_decoder.{name}" for name in vectors_and(self.text_decoder)}

    def forward(
        self,
        image: Optional[paddle.Tensor] = None,
        input_ids: Optional[paddle.Tensor] = None,
    ) -> Dict[str, paddle.Tensor]:
        outputs = {"logit_scale": self.scale()}
        if image is not None:
            image_features, image_tokens = self.visual.forward_with_tokens(image)
            outputs["image_features"] = F.normalize(image_features, axis=-1)
        if input_ids is not None:
            text_features, text_states = self.text.forward_with_tokens(input_ids)
            outputs["text_features"] = F.normalize(text_features, axis=-1)
        if image is not None and input_ids is not None:
            outputs["logits"] = self.text_decoder(image_tokens, text_states[:, :-1])
            outputs["labels"] = input_ids[:, 1:]
        return outputs

    @paddle.no_grad()
    def generate(self, image: paddle.Tensor, text: Optional[paddle.Tensor] = None, **options) -> paddle.Tensor:
        """Caption token ids [batch, length] (int64, <start_of_text> first, padded with `pad_id`) of
        normalised images [batch, 3, H, W]. options: GenerationConfig's fields (beam search by default,
        as open_clip); `text`: a prompt [batch, length] to continue (sampling only)."""
        options.setdefault("pad_token_id", self.pad_id)
        config = GenerationConfig(**options)
        if config.seq_len > self.context_length:
            raise ValueError(f"seq_len {config.seq_len} exceeds the model's context_length {self.context_length}")
        vocab_size = self.config.multimodal_cfg.vocab_size
        for name in ("sot_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(config, name) < vocab_size:
                raise ValueError(f"{name}={getattr(config, name)} is outside the model's vocabulary of {vocab_size} "
                                 "tokens; pass the ids of its own tokenizer")
        was_training = self.training
        self.eval()
        try:
            _, image_tokens = self.visual.forward_with_tokens(image)
            beams = config.num_beams if config.generation_type == "beam_search" else 1
            state = _DecodingState(self, image_tokens, beams)
            prompt = None if text is None else np.asarray(text.numpy() if isinstance(text, paddle.Tensor) else text)
            tokens = generate_tokens(state.step, image.shape[0], config, prompt=prompt)
        finally:
            self.train(was_training)
        return paddle.to_tensor(tokens, dtype="int64")


def decode_captions(token_ids, tokenizer) -> List[str]:
    """Text of each row of `generate`'s output, by the model's `tokenizer` (processors.get_tokenizer):
    <start_of_text> and everything from <end_of_text> on dropped."""
    rows = token_ids.numpy() if isinstance(token_ids, paddle.Tensor) else np.asarray(token_ids)
    return [tokenizer.decode(row).strip() for row in rows]


class _DecodingState:
    """The step function of `generate_tokens` for one batch of images: key/value caches of the text
    tower and the decoder, and the image tokens' keys and values, computed once per image."""

    def __init__(self, model: CoCa, image_tokens: paddle.Tensor, beams: int):
        self.model = model
        self.images = image_tokens.shape[0]
        self.beams = beams
        self.text_caches = [KVCache() for _ in model.text.transformer.resblocks]
        self.decoder_caches = [KVCache() for _ in model.text_decoder.resblocks]
        self.image_kv = model.text_decoder.image_kv(image_tokens)
        self.length = 0

    def step(self, input_ids: np.ndarray, reorder: Optional[np.ndarray]) -> np.ndarray:
        if reorder is not None:
            rows = np.arange(len(reorder))
            if not np.array_equal(reorder // self.beams, rows // self.beams):
                raise RuntimeError("beam search moved a sequence to another image's beams")
            reorder = paddle.to_tensor(reorder, dtype="int64")
            for cache in self.text_caches + self.decoder_caches:
                cache.reorder(reorder)
        text = self.model.text
        ids = paddle.to_tensor(input_ids, dtype="int64")
        dtype = text.positional_embedding.dtype
        if text.cls_emb is not None:
            key_mask = text.key_padding_mask(ids, dtype)[..., : ids.shape[1]]
        else:
            key_mask = paddle.zeros([1, 1, 1, ids.shape[1]], dtype)
        states = text.token_states_step(ids, self.length, self.text_caches, key_mask)
        logits = self.model.text_decoder.next_token_logits(
            states, self.length, self.decoder_caches, self.image_kv, images=self.images
        )
        self.length = ids.shape[1]
        return logits.astype("float32").numpy()
