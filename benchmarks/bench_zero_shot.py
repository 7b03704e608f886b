"""Zero-shot evaluation speed: classifier build (texts/s, extrapolated to 1000 classes x 80 templates)
and image evaluation (images/s: JPEG decode + eval transform + encode_image + classify), beside open_clip.

    python benchmarks/bench_zero_shot.py --peer ../reference/.venv/bin/python

ViT-B-32 with random weights, 2 threads each; images also through the exported encoders
(Paddle Inference, oneDNN fp32 and bf16; `--backend inference` of the evaluator), and the classifier
through the exported text encoder. The build is timed on `--classes` ImageNet classes x
80 templates (the full 80,000 texts would take tens of minutes on this machine) and reported per text
and extrapolated; both sides use their own tokenizer and the same class names and templates.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

from paddlemix import AutoConfig, AutoModel
from paddlemix.evaluation import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier
from paddlemix.evaluation.features import image_features
from paddlemix.inference import InferenceModel
from paddlemix.processors import image_transform
from paddlemix.tools.export import export
from paddlemix.utils.cpu_process import prepare_cpu_process

from timing import machine_line

FULL_TEXTS = 1000 * 80
PEER_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np, torch, open_clip
    from PIL import Image
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    torch.set_num_threads(2)
    names, templates, paths, batch = json.load(open(sys.argv[1]))
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    start = time.perf_counter()
    with torch.inference_mode():
        classifier = build_zero_shot_classifier(model, tokenizer, names, [lambda c, t=t: t.format(c) for t in templates],
                                                num_classes_per_batch=10, device="cpu", use_tqdm=False)
    build = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            images = torch.stack([preprocess(Image.open(p)) for p in paths[i:i + batch]])
            logits = model.encode_image(images, normalize=True) @ classifier
    evaluate = time.perf_counter() - start
    print(json.dumps({"texts_per_s": len(names) * len(templates) / build, "images_per_s": len(paths) / evaluate}))
''')


def write_images(directory: Path, count: int):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        path = directory / f"{index}.jpg"
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(2)
    names, templates = list(IMAGENET_CLASSNAMES[: args.classes]), list(OPENAI_IMAGENET_TEMPLATES)
    model = AutoModel.from_config(AutoConfig.from_pretrained("paddlemix/CLIP/ViT-B-32"))
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        start = time.perf_counter()
        classifier = build_zero_shot_classifier(model, names, templates, batch_classes=10)
        texts_per_s = len(names) * len(templates) / (time.perf_counter() - start)
        transform = image_transform(224, is_train=False)
        start = time.perf_counter()
        image_features(model, paths, transform, args.batch_size).features @ classifier.numpy()
        images_per_s = len(paths) / (time.perf_counter() - start)
        ours = {"texts_per_s": texts_per_s, "images_per_s": images_per_s}
        export(model, Path(tmp) / "export")
        for precision in ("fp32", "bf16"):
            exported = InferenceModel(Path(tmp) / "export", precision)
            build_zero_shot_classifier(exported, names[:1], templates[:8], batch_classes=1)  # oneDNN warm-up
            start = time.perf_counter()
            build_zero_shot_classifier(exported, names, templates, batch_classes=10)
            ours[f"texts_per_s_inference_{precision}"] = len(names) * len(templates) / (time.perf_counter() - start)
            image_features(exported, paths[: args.batch_size], transform, args.batch_size)  # oneDNN warm-up
            start = time.perf_counter()
            image_features(exported, paths, transform, args.batch_size).features @ classifier.numpy()
            ours[f"images_per_s_inference_{precision}"] = len(paths) / (time.perf_counter() - start)
        peer = None
        if args.peer:
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps([names, templates, paths, args.batch_size]))
            script = Path(tmp) / "peer.py"
            script.write_text(PEER_SCRIPT)
            output = subprocess.run([args.peer, str(script), str(spec)], check=True, capture_output=True, text=True)
            peer = json.loads(output.stdout.strip().splitlines()[-1])
    print(machine_line(2))
    print(f"ViT-B-32, 2 threads; classifier on {len(names)} classes x {len(templates)} templates, {args.images} images")
    for key in ("texts_per_s", "texts_per_s_inference_fp32", "texts_per_s_inference_bf16",
                "images_per_s", "images_per_s_inference_fp32", "images_per_s_inference_bf16"):
        kind = key.split("_")[0]
        line = f"  {key:<28} paddlemix {ours[key]:8.1f} {kind}/s"
        if kind == "texts":
            line += f" (1000 x 80 classifier: {FULL_TEXTS / ours[key] / 60:5.1f} min)"
        if peer:
            peer_key = f"{kind}_per_s"  # open_clip eager fp32 is the peer of every path
            line += f"   open_clip {peer[peer_key]:8.1f}   ratio {ours[key] / peer[peer_key]:.2f}"
        print(line)


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
