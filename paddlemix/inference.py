"""Run encoders exported by `python -m paddlemix.tools.export` with Paddle Inference.

    encoders = InferenceEncoders("./ViT-B-32-infer", precision="bf16", threads=2)
    image_features = encoders.encode_image(images)    # float32 [N, 3, H, W] -> [N, embed_dim]
    text_features = encoders.encode_text(input_ids)    # int64 [N, context_length] -> [N, embed_dim]

CPU runs through oneDNN; `precision="bf16"` asks oneDNN for bfloat16 kernels (AMX / AVX512-BF16),
which needs a CPU that Paddle reports as bfloat16-capable. On a CUDA build with a visible GPU the
encoders run on GPU 0 (`bf16` there as Paddle Inference's mixed precision, compute capability >= 8.0).
"""

import hashlib
import json
import os
import types
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import paddle
import paddle.inference as paddle_infer

from .tools.export import EXPORT_FILE, IMAGE_ENCODER, PRECISIONS, TEXT_ENCODER
from .utils.platform import cpu_supports_bf16, gpu_available

GPU_MEMORY_POOL_MB = 256  # initial pool; Paddle grows it as needed


def device_supports_bf16() -> bool:
    """bf16 compute on the device InferenceEncoders would use: GPU 0 if present, else the CPU."""
    if gpu_available():
        return paddle.device.cuda.get_device_capability(0)[0] >= 8
    return cpu_supports_bf16()


def _config(prefix: Path, precision: str, threads: int) -> paddle_infer.Config:
    config = paddle_infer.Config(f"{prefix}.json", f"{prefix}.pdiparams")
    config.disable_glog_info()
    if gpu_available():
        gpu_precision = paddle_infer.PrecisionType.Bfloat16 if precision == "bf16" else paddle_infer.PrecisionType.Float32
        config.enable_use_gpu(GPU_MEMORY_POOL_MB, 0, gpu_precision)
        return config
    config.disable_gpu()
    config.enable_onednn()
    config.set_cpu_math_library_num_threads(threads)
    if precision == "bf16":
        config.enable_onednn_bfloat16()
    return config


CHUNK_ROWS = 64


class _Encoder:
    """One exported program behind a predictor: numpy batch in, numpy features out."""

    def __init__(self, prefix: Path, precision: str, threads: int, dtype: str):
        self.predictor = paddle_infer.create_predictor(_config(prefix, precision, threads))
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        self.dtype = dtype

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Rows in chunks of at most CHUNK_ROWS: oneDNN runs large batches slower per row (CLIP's text
        encoder in bf16: 57 texts/s at 800 rows, 130 at 80)."""
        outputs = []
        for start in range(0, len(batch), CHUNK_ROWS):
            chunk = np.ascontiguousarray(batch[start:start + CHUNK_ROWS], dtype=self.dtype)
            self.input.reshape(chunk.shape)
            self.input.copy_from_cpu(chunk)
            self.predictor.run()
            outputs.append(self.output.copy_to_cpu())
        return np.concatenate(outputs)


class InferenceEncoders:
    """The image and text encoders of an export directory, on GPU if there is one, else CPU + oneDNN.

    precision: "fp32" or "bf16" (bfloat16 compute, float32 inputs and outputs). threads: CPU
    intra-op threads, default all cores this process may use.
    """

    def __init__(self, export_dir: Union[str, Path], precision: str = "fp32", threads: Optional[int] = None):
        export_dir = Path(export_dir)
        description = export_dir / EXPORT_FILE
        if not description.is_file():
            raise FileNotFoundError(
                f"{description} does not exist: export the model first with "
                f"python -m paddlemix.tools.export --model NAME_OR_DIR --output {export_dir}"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and not device_supports_bf16():
            raise RuntimeError(
                "precision 'bf16' is not supported here: it needs a GPU of compute capability >= 8.0, or a CPU "
                "with AVX512-BF16 or AMX and a oneDNN build of Paddle "
                "(paddle.base.core.supports_bfloat16_fast_performance()); use precision='fp32'"
            )
        self.description = json.loads(description.read_text())
        self.precision = precision
        threads = threads or len(os.sched_getaffinity(0))
        self._image = _Encoder(export_dir / IMAGE_ENCODER, precision, threads, "float32")
        self._text = _Encoder(export_dir / TEXT_ENCODER, precision, threads, "int64")

    def encode_image(self, images: np.ndarray) -> np.ndarray:
        """images: float32 [N, 3, H, W], normalised as for the model -> unnormalised features [N, embed_dim]."""
        return self._image(images)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids: int64 [N, context_length] -> unnormalised features [N, embed_dim]."""
        return self._text(input_ids)


class InferenceModel(paddle.nn.Layer):
    """An exported model behind the eager model's evaluation interface (`encode_image`, `encode_text`,
    `config`, `visual.image_size`, `context_length`), so the evaluator and the CLI run on either."""

    def __init__(self, export_dir: Union[str, Path], precision: str = "fp32", threads: Optional[int] = None):
        super().__init__()
        from .models.auto import MODEL_TYPES

        self.export_dir = Path(export_dir)
        self.encoders = InferenceEncoders(export_dir, precision, threads)
        values = self.encoders.description["model_config"]
        self.config = MODEL_TYPES[values["model_type"]][0].from_dict(values, where=str(self.export_dir))
        self.config.name_or_path = str(self.export_dir)  # its tokenizer files, if any, were exported beside it
        size = self.config.vision_cfg.image_size
        self.visual = types.SimpleNamespace(image_size=tuple(size) if isinstance(size, (list, tuple)) else (size, size))

    @property
    def context_length(self) -> int:
        return self.config.text_cfg.context_length

    def scalars(self) -> Dict[str, paddle.Tensor]:
        """exp(logit_scale) and, where the model had one, logit_bias, as the eager model's `scalars`."""
        return {name: paddle.to_tensor([self.encoders.description[name]], dtype="float32")
                for name in ("logit_scale", "logit_bias") if name in self.encoders.description}

    def text_fingerprint(self) -> str:
        """sha256 of the exported text encoder's weights (what a zero-shot classifier depends on)."""
        return hashlib.sha256((self.export_dir / (TEXT_ENCODER + ".pdiparams")).read_bytes()).hexdigest()

    def encode_image(self, images: paddle.Tensor, normalize: bool = False) -> paddle.Tensor:
        features = paddle.to_tensor(self.encoders.encode_image(images.numpy()))
        return paddle.nn.functional.normalize(features, axis=-1) if normalize else features

    def encode_text(self, input_ids: paddle.Tensor, normalize: bool = False) -> paddle.Tensor:
        features = paddle.to_tensor(self.encoders.encode_text(input_ids.numpy()))
        return paddle.nn.functional.normalize(features, axis=-1) if normalize else features


def load_model(name_or_dir: str, backend: str = "eager", precision: str = "fp32"):
    """The eager model (a registry name or model directory), or with backend 'inference' the model
    exported to `name_or_dir` by `paddlemix.tools.export`, behind the same interface."""
    if backend == "eager":
        from .models.auto import AutoModel
        from .models.registry import resolve_model_name

        return AutoModel.from_pretrained(resolve_model_name(name_or_dir))
    if backend == "inference":
        return InferenceModel(name_or_dir, precision)
    raise ValueError(f"--backend must be eager or inference, got {backend!r}")
