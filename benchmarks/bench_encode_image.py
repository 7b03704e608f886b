"""encode_image throughput (images/s) of a paddlemix CLIP, optionally beside open_clip in the same run.

    python benchmarks/bench_encode_image.py --model paddlemix/CLIP/ViT-B-32 --batch-size 32 \
        --peer ../reference/.venv/bin/python

Random-init weights and N(0, 1) inputs (speed does not depend on the values); float32, eval mode,
no gradients. images/s = batch / median time per batch after warm-up. `--threads` sets the
intra-op threads of both frameworks (Paddle alone defaults to 1). With --peer, open_clip runs
afterwards through ../shared/reference/openclip_bench.py in that interpreter, one at a time.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle

from paddlemix import AutoConfig, AutoModel

REFERENCE_BENCH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openclip_bench.py"


def time_paddlemix(model_name: str, batch_size: int, steps: int, warmup: int) -> dict:
    model = AutoModel.from_config(AutoConfig.from_pretrained(model_name))
    model.eval()
    size = model.visual.image_size
    images = paddle.to_tensor(np.random.default_rng(0).standard_normal((batch_size, 3, *size), dtype=np.float32))
    times = []
    with paddle.no_grad():
        for step in range(warmup + steps):
            start = time.perf_counter()
            model.encode_image(images).numpy()  # .numpy() waits for the result
            if step >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"images_per_s": batch_size / median, "median_s": median, "times_s": times}


def time_open_clip(peer_python: str, model_name: str, batch_size: int, steps: int, warmup: int, threads: int) -> dict:
    open_clip_name = model_name.split("/")[-1]
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "open_clip.json"
        subprocess.run(
            [peer_python, str(REFERENCE_BENCH), "--model", open_clip_name, "--skip-train", "--skip-text-infer",
             "--infer-batch", str(batch_size), "--infer-steps", str(steps + warmup), "--infer-warmup", str(warmup),
             "--threads", str(threads), "--json", str(result_file)],
            check=True, stdout=subprocess.DEVNULL,
        )
        result = json.loads(result_file.read_text())["infer_image"]
    return {"images_per_s": result["items_per_s"], "median_s": result["median_s"], "times_s": result["times_s"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paddlemix/CLIP/ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    args = parser.parse_args(argv)

    paddle.base.core.set_num_threads(args.threads)
    ours = time_paddlemix(args.model, args.batch_size, args.steps, args.warmup)
    print(f"paddlemix {args.model} encode_image batch {args.batch_size}, {args.threads} threads: "
          f"{ours['images_per_s']:.1f} images/s (median {ours['median_s'] * 1000:.0f} ms/batch)")
    if args.peer:
        peer = time_open_clip(args.peer, args.model, args.batch_size, args.steps, args.warmup, args.threads)
        print(f"open_clip {args.model.split('/')[-1]} same settings: {peer['images_per_s']:.1f} images/s "
              f"(median {peer['median_s'] * 1000:.0f} ms/batch)")
        print(f"ratio paddlemix / open_clip: {ours['images_per_s'] / peer['images_per_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
