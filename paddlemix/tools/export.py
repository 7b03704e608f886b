"""Export a model's two encoders as Paddle Inference programs for deployment.

    python -m paddlemix.tools.export --model paddlemix/CLIP/ViT-B-32 --output ./ViT-B-32-infer

`--model` is a model directory or a registry name (weights from the cache or the community URL;
`--random-init` exports the architecture with random weights, for speed tests). The output holds
`image_encoder.{json,pdiparams}` (float32 images [N, 3, H, W] -> features [N, embed_dim]),
`text_encoder.{json,pdiparams}` (int64 token ids [N, context_length] -> [N, embed_dim]) and
`export.json` (inputs, outputs, the precision to run them at and the model config). The encoders
return unnormalised features, as `encode_image` / `encode_text` do. The weights are always saved
in float32: `--precision bf16` is a run-time choice recorded in `export.json` that
`paddlemix.inference.InferenceEncoders` applies through oneDNN, not a conversion of the weights.

Linear layers and attention are traced as matmul (+ add), not as the eager model's addmm / einsum:
those have no oneDNN kernels, so Paddle Inference could neither fuse them into oneDNN `fc` nor run
them in bf16 (ViT-B-32, batch 32, 2 AMX cores: ~27 images/s in bf16 and 28 in fp32 as traced
eagerly, ~110 and 35 this way; see benchmarks/bench_inference.py). The maths is the same.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Union

import paddle

from ..models.auto import AutoConfig, AutoModel
from ..models.layers.kernels import export_kernels
from ..utils.log import logger

EXPORT_FILE = "export.json"
IMAGE_ENCODER = "image_encoder"
TEXT_ENCODER = "text_encoder"
PRECISIONS = ("fp32", "bf16")


class _ImageEncoder(paddle.nn.Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode_image(image)


class _TextEncoder(paddle.nn.Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


def _load_model(name_or_dir: str, random_init: bool):
    if not random_init:
        return AutoModel.from_pretrained(name_or_dir)
    model = AutoModel.from_config(AutoConfig.from_pretrained(name_or_dir))
    model.eval()
    return model


def _save(layer: paddle.nn.Layer, spec: paddle.static.InputSpec, prefix: Path) -> None:
    with export_kernels():
        static = paddle.jit.to_static(layer, input_spec=[spec], full_graph=True)
        paddle.jit.save(static, str(prefix))


def export(model, output: Union[str, Path], precision: str = "fp32") -> Path:
    """Write both encoders of `model` (a CLIP in eval mode) and export.json to `output`; returns export.json."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    height, width = model.visual.image_size
    embed_dim = model.config.embed_dim
    image_spec = paddle.static.InputSpec([None, 3, height, width], "float32", name="image")
    text_spec = paddle.static.InputSpec([None, model.context_length], "int64", name="input_ids")
    _save(_ImageEncoder(model), image_spec, output / IMAGE_ENCODER)
    _save(_TextEncoder(model), text_spec, output / TEXT_ENCODER)
    description = {
        "precision": precision,
        "weights_dtype": "float32",
        "normalized": False,
        "encoders": {
            IMAGE_ENCODER: {"input": {"name": "image", "dtype": "float32", "shape": [None, 3, height, width]},
                            "output": {"dtype": "float32", "shape": [None, embed_dim]}},
            TEXT_ENCODER: {"input": {"name": "input_ids", "dtype": "int64", "shape": [None, model.context_length]},
                           "output": {"dtype": "float32", "shape": [None, embed_dim]}},
        },
        "model_config": model.config.to_dict(),
        # the temperature (and bias) of zero-shot probabilities, as the model's `scalars`
        **{name: float(value) for name, value in model.scalars().items()},
    }
    path = output / EXPORT_FILE
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registry name or model directory")
    parser.add_argument("--output", required=True, type=Path, help="directory to write the exported encoders to")
    parser.add_argument("--random-init", action="store_true", help="random weights instead of trained ones")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="precision InferenceEncoders runs the encoders at by default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = export(_load_model(args.model, args.random_init), args.output, args.precision)
    logger.info("wrote %s and the image/text encoders beside it", path)


if __name__ == "__main__":
    sys.exit(main())
