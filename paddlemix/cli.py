"""Command-line tools on a CLIP-family model: zero-shot labels for images, an image-text similarity
map, and captions (CoCa); and the list of registry models.

    python -m paddlemix.cli zeroshot --model paddlemix/CLIP/ViT-B-32 --images photos/ cat.jpg \\
        --labels "cat,dog,bird" [--templates "a photo of a {}." ...] [--top-k 5] [--batch-size 32]
    python -m paddlemix.cli similarity --model ./ViT-B-32 --images photos/ \\
        --texts "a cat" "a dog" [--output similarity.png] [--batch-size 32]
    python -m paddlemix.cli caption --model ./CoCa-ViT-B-32 --images photos/ --output captions.jsonl \\
        [--generation-type beam_search|top_k|top_p] [--seq-len 30] [--num-beams 6] [--seed 0] ...
    python -m paddlemix.cli models

`models` prints every registry name with its parameter count, input resolution and whether its
weights are in the cache ($PPMIX_HOME/models/<name>/model_state.pdparams).

`--model` is a registry name or a model directory (config.json + model_state.pdparams). `--images`
takes files and directories (each directory's image files, by suffix, sorted by name). Unreadable
images are skipped with a logged warning and counted in the summary line. Results go to stdout, logs
to stderr; the exit code is 1 when the model or the images cannot be used.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import paddle
from PIL import Image

from .inference import load_model
from .models.coca import GenerationConfig, decode_captions
from .models.hub import ppmix_home
from .models.loss_registry import build_loss
from .models.registry import describe_models
from .data.samples import BadSample, load_image_file
from .evaluation.plots import save_similarity_heat_map
from .evaluation.zero_shot import build_zero_shot_classifier, check_template, evaluation_mode
from .processors import CLIPProcessor
from .utils.log import logger
from .utils.cpu_process import prepare_cpu_process

# Files taken from an --images directory; other files there are ignored, not counted as unreadable.
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
DEFAULT_TEMPLATES = ["a photo of a {}."]  # the single prompt of the CLIP paper's zero-shot baseline


def image_paths(entries: Sequence[str]) -> List[Path]:
    """Files in the order given, each directory replaced by its image files sorted by name."""
    paths = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"--images {entry}: no such file or directory")
    return paths


def readable_batches(paths: Sequence[Path], batch_size: int) -> Iterator[Tuple[List[Path], List[Image.Image], int]]:
    """(paths, images, number skipped) for every `batch_size` paths; unreadable images are logged and left out."""
    for start in range(0, len(paths), batch_size):
        batch, kept, images = paths[start:start + batch_size], [], []
        for path in batch:
            image = load_image_file(str(path))
            if isinstance(image, BadSample):
                logger.warning("skipping %s: %s", path, image.reason.replace("_", " "))
            else:
                kept.append(path)
                images.append(image)
        yield kept, images, len(batch) - len(kept)


def embed_images(model, processor: CLIPProcessor, images: Sequence[Image.Image]) -> paddle.Tensor:
    """L2-normalised image embeddings [len(images), embed_dim]."""
    return model.encode_image(processor(images=images)["image"], normalize=True)


def report_summary(done: int, skipped: int, verb: str) -> int:
    """Print the summary line; exit code 1 when no image could be read."""
    print(f"{done} images {verb}, {skipped} unreadable skipped")
    if done == 0:
        logger.error("none of the images given with --images could be read")
        return 1
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    """One line per readable image: its path, then the top-k labels with their probabilities."""
    paths = image_paths(args.images)
    model = load_model(args.model, args.backend, args.precision)
    processor = CLIPProcessor.from_config(model.config)
    classifier = build_zero_shot_classifier(model, processor.tokenizer, args.labels, args.templates)  # [embed_dim, labels]
    k = min(args.top_k, len(args.labels))
    classified = skipped = 0
    loss = build_loss(model.config)  # the probabilities are those the model was trained for: softmax or sigmoid
    with evaluation_mode(model):
        scalars = model.scalars()
        for batch_paths, images, batch_skipped in readable_batches(paths, args.batch_size):
            skipped += batch_skipped
            if not images:
                continue
            probabilities = loss.probabilities(embed_images(model, processor, images), classifier.T, scalars)
            for path, probs in zip(batch_paths, probabilities.numpy()):
                top = np.argsort(-probs, kind="stable")[:k]  # ties: the earlier label first
                print(f"{path}: " + ", ".join(f"{args.labels[i]} {probs[i]:.3f}" for i in top))
            classified += len(images)
    return report_summary(classified, skipped, "classified")


def format_matrix(similarity: np.ndarray, texts: Sequence[str], paths: Sequence[Path]) -> str:
    """The [texts, images] matrix as text: an index per image, then one row per text."""
    width = max(len(text) for text in texts)
    lines = ["cosine similarity (rows: texts, columns: images)"]
    lines += [f"image {col}: {path}" for col, path in enumerate(paths)]
    lines.append(" " * width + "".join(f"{col:>11}" for col in range(len(paths))))
    lines += [f"{text:<{width}}" + "".join(f"{value:>+11.6f}" for value in row) for text, row in zip(texts, similarity)]
    return "\n".join(lines)


def run_similarity(args: argparse.Namespace) -> int:
    """Print the text x image cosine similarities and write them as a heat map PNG."""
    paths = image_paths(args.images)
    model = load_model(args.model, args.backend, args.precision)
    processor = CLIPProcessor.from_config(model.config)
    kept_paths, kept_images, embeddings, skipped = [], [], [], 0
    with evaluation_mode(model):
        text_features = model.encode_text(processor(text=args.texts)["input_ids"], normalize=True)
        for batch_paths, images, batch_skipped in readable_batches(paths, args.batch_size):
            skipped += batch_skipped
            if images:
                kept_paths += batch_paths
                kept_images += images
                embeddings.append(embed_images(model, processor, images))
    if not kept_paths:
        return report_summary(0, skipped, "compared")
    similarity = paddle.matmul(text_features, paddle.concat(embeddings), transpose_y=True).numpy()
    print(format_matrix(similarity, args.texts, kept_paths))
    save_similarity_heat_map(similarity, kept_images, args.texts, args.output)
    print(f"heat map: {args.output.resolve()}")
    return report_summary(len(kept_paths), skipped, "compared")


def run_caption(args: argparse.Namespace) -> int:
    """One JSON line {"image": path, "caption": text} per readable image, in --output and on stdout.
    The lines go to OUTPUT.partial as they are made, renamed to OUTPUT when every image is done."""
    paths = image_paths(args.images)
    model = load_model(args.model)
    if not hasattr(model, "generate"):
        raise ValueError(f"--model {args.model} is a {model.config.model_type} model, which cannot write captions; "
                         "give a CoCa model (e.g. paddlemix/CoCa/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k)")
    options = {name: getattr(args, name) for name in GENERATION_OPTIONS}
    processor = CLIPProcessor.from_config(model.config)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".partial")
    captioned = skipped = 0
    with open(partial, "w", encoding="utf-8") as handle:
        for batch_paths, images, batch_skipped in readable_batches(paths, args.batch_size):
            skipped += batch_skipped
            if not images:
                continue
            tokens = model.generate(processor(images=images)["image"], **options)
            for path, caption in zip(batch_paths, decode_captions(tokens, processor.tokenizer)):
                line = json.dumps({"image": str(path), "caption": caption}, ensure_ascii=False)
                print(line)
                handle.write(line + "\n")
            handle.flush()
            captioned += len(images)
    partial.replace(args.output)
    logger.info("captions written to %s", args.output.resolve())
    return report_summary(captioned, skipped, "captioned")


def run_models(args: argparse.Namespace) -> int:
    """A table of the registry: name, parameters, resolution, and the weights' state."""
    rows = [("name", "parameters", "resolution", "weights")]
    for info in describe_models():
        height, width = info.image_size
        state = "cached" if info.cached else ("not cached" if info.weights_url else "none published")
        rows.append((info.name, f"{info.parameters:,}", str(height) if height == width else f"{height}x{width}", state))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    print(f"{len(rows) - 1} models; weights are read from {ppmix_home() / 'models'}/<name>/model_state.pdparams")
    return 0


# caption flags that are GenerationConfig fields, as `--seq-len` -> seq_len
GENERATION_OPTIONS = ("generation_type", "seq_len", "min_seq_len", "num_beams", "num_beam_groups", "top_k", "top_p",
                      "temperature", "repetition_penalty", "seed")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def label_list(value: str) -> List[str]:
    labels = [label.strip() for label in value.split(",")]
    empty = [str(i + 1) for i, label in enumerate(labels) if not label]
    if empty:
        raise argparse.ArgumentTypeError(f"label {', '.join(empty)} of {value!r} is empty; give e.g. \"cat,dog\"")
    return labels


def template(value: str) -> str:
    try:
        return check_template(value, "--templates")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def non_empty_text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("texts must not be empty")
    return value


def add_generation_flags(caption: argparse.ArgumentParser) -> None:
    defaults = GenerationConfig()
    caption.add_argument("--output", type=Path, default=Path("captions.jsonl"), help="JSON lines file to write")
    caption.add_argument("--generation-type", choices=("beam_search", "top_k", "top_p"), default=defaults.generation_type,
                         help="beam search (deterministic) or top-k / top-p sampling (seeded by --seed)")
    caption.add_argument("--seq-len", type=positive_int, default=defaults.seq_len,
                         help="maximum caption length in tokens, <start_of_text> included")
    caption.add_argument("--min-seq-len", type=positive_int, default=defaults.min_seq_len,
                         help="no <end_of_text> before this many tokens")
    caption.add_argument("--num-beams", type=positive_int, default=defaults.num_beams)
    caption.add_argument("--num-beam-groups", type=positive_int, default=defaults.num_beam_groups,
                         help="beam groups searched side by side (must divide --num-beams)")
    caption.add_argument("--top-k", type=positive_int, default=defaults.top_k, help="top_k sampling: tokens kept")
    caption.add_argument("--top-p", type=float, default=defaults.top_p, help="top_p sampling: probability mass kept")
    caption.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature")
    caption.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                         help="> 1 discourages tokens already in the caption")
    caption.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed gives the same captions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paddlemix.cli", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    zeroshot = commands.add_parser("zeroshot", help="top-k zero-shot labels for each image")
    similarity = commands.add_parser("similarity", help="image x text cosine similarity, printed and as a heat map")
    caption = commands.add_parser("caption", help="captions of images (CoCa models), as JSON lines")
    commands.add_parser("models", help="registry names: parameters, resolution, whether the weights are cached")
    for command in (zeroshot, similarity, caption):
        command.add_argument("--model", required=True, help="registry name (paddlemix/CLIP/ViT-B-32) or model dir")
        command.add_argument("--images", required=True, nargs="+", help="image files and directories of images")
        command.add_argument("--batch-size", type=positive_int, default=32 if command is not caption else 8,
                             help="images per forward pass")
    for command in (zeroshot, similarity):
        command.add_argument("--backend", choices=("eager", "inference"), default="eager",
                             help="inference: --model is a `python -m paddlemix.tools.export` directory")
        command.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="inference backend only")
    add_generation_flags(caption)
    zeroshot.add_argument("--labels", required=True, type=label_list, help='comma-separated, e.g. "cat,dog,bird"')
    zeroshot.add_argument("--templates", nargs="+", type=template, default=DEFAULT_TEMPLATES,
                          help="prompts with {} for the label; a label's embedding is the mean over them")
    zeroshot.add_argument("--top-k", type=positive_int, default=5, help="labels per image (at most all labels)")
    similarity.add_argument("--texts", required=True, nargs="+", type=non_empty_text, help="captions to compare")
    similarity.add_argument("--output", type=Path, default=Path("similarity.png"), help="heat-map PNG to write")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = {"zeroshot": run_zeroshot, "similarity": run_similarity, "caption": run_caption, "models": run_models}[
        args.command]
    try:
        return run(args)
    except (OSError, ValueError) as err:
        logger.error("%s", err)
        return 1


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
