"""One callable that turns images and captions into model inputs."""

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import paddle

from ..models.auto import AutoConfig
from .factory import get_tokenizer
from .image_transforms import image_transform, preprocess_options


class CLIPProcessor:
    """`processor(images=[...], text=[...])` -> {"image": [N, 3, H, W] float32, "input_ids": [N, L] int64}.

    `CLIPProcessor(image_size, tokenizer)` preprocesses images as OpenAI CLIP did unless `preprocess`
    says otherwise; `from_config(config)` as the model was trained (its `preprocess_cfg`, its tokenizer).
    """

    def __init__(self, image_size, tokenizer, **preprocess):
        """tokenizer: processors.get_tokenizer(model); preprocess: the image transform's mean, std,
        interpolation, resize_mode, fill_color."""
        self.tokenizer = tokenizer
        self.eval_transform = image_transform(image_size, is_train=False, **preprocess)
        self.train_transform = image_transform(image_size, is_train=True, **preprocess)

    @classmethod
    def from_config(cls, config) -> "CLIPProcessor":
        return cls(config.vision_cfg.image_size, get_tokenizer(config), **preprocess_options(config))

    def __call__(
        self,
        images: Optional[Sequence] = None,
        text: Optional[Union[str, Sequence[str]]] = None,
        train: bool = False,
        return_tensors: str = "pd",
    ) -> Dict[str, Union[np.ndarray, paddle.Tensor]]:
        """images: PIL images or HWC uint8 arrays; text: str or list of str. return_tensors 'pd' or 'np'."""
        if return_tensors not in ("pd", "np"):
            raise ValueError(f"return_tensors must be 'pd' or 'np', got {return_tensors!r}")
        outputs = {}
        if images is not None:
            transform = self.train_transform if train else self.eval_transform
            outputs["image"] = np.stack([transform(image) for image in images])
        if text is not None:
            outputs["input_ids"] = self.tokenizer(text)
        if return_tensors == "pd":
            outputs = {key: paddle.to_tensor(value) for key, value in outputs.items()}
        return outputs


class AutoProcessor:
    @staticmethod
    def from_pretrained(name_or_dir: Union[str, Path]) -> CLIPProcessor:
        """Tokenizer + image transforms sized for the model's config."""
        return CLIPProcessor.from_config(AutoConfig.from_pretrained(name_or_dir))
