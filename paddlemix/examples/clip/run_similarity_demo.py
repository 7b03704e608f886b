"""Embed a few captions and images with a CLIP model, print their similarity and save a heat map.

    python paddlemix/examples/clip/run_similarity_demo.py                      # small random-init CLIP
    python paddlemix/examples/clip/run_similarity_demo.py --model ./ViT-B-32   # converted real weights

The images are drawn in code (the embedded set's coloured shapes), so nothing is downloaded. With the default
random-init model the numbers show the pipeline working, not semantic matches; point --model at
converted weights (python -m paddlemix.tools.convert) for meaningful ones.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import paddle

from paddlemix import AutoModel
from paddlemix.data.synthetic import draw
from paddlemix.evaluation.plots import save_similarity_heat_map
from paddlemix.models import CLIPConfig, TextConfig, VisionConfig
from paddlemix.processors import CLIPProcessor
from paddlemix.utils.cpu_process import prepare_cpu_process

logger = logging.getLogger("paddlemix.examples.similarity")

# A small CLIP (ViT with 4 blocks of width 256, text tower of width 256) that builds in a second.
DEMO_CONFIG = CLIPConfig(
    embed_dim=256,
    vision_cfg=VisionConfig(image_size=224, patch_size=32, width=256, head_width=64, layers=4),
    text_cfg=TextConfig(context_length=77, vocab_size=49408, width=256, heads=4, layers=4),
)
SHAPES = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="registry name or model directory (default: small random CLIP)")
    parser.add_argument("--output", type=Path, default=Path("similarity.png"), help="heat-map PNG to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    paddle.seed(args.seed)
    model = AutoModel.from_pretrained(args.model) if args.model else AutoModel.from_config(DEMO_CONFIG)
    model.eval()
    processor = CLIPProcessor.from_config(model.config)
    rng = np.random.default_rng(args.seed)
    images = [draw(colour, shape, "top left", rng, size=256) for colour, shape in SHAPES]
    captions = [f"a {colour} {shape}" for colour, shape in SHAPES]
    inputs = processor(images=images, text=captions)
    with paddle.no_grad():
        outputs = model(image=inputs["image"], input_ids=inputs["input_ids"])
    similarity = (outputs["text_features"] @ outputs["image_features"].T).numpy()

    width = max(len(c) for c in captions)
    lines = ["cosine similarity (rows: captions, columns: images)", " " * width + "".join(f"{i:>9}" for i in range(len(images)))]
    lines += [f"{caption:<{width}}" + "".join(f"{v:>+9.4f}" for v in row) for caption, row in zip(captions, similarity)]
    logger.info("\n".join(lines))
    save_similarity_heat_map(similarity, images, captions, args.output)
    logger.info("heat map written to %s", args.output.resolve())


if __name__ == "__main__":
    prepare_cpu_process()
    main()
