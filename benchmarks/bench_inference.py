"""encode_image speed of an exported model under Paddle Inference (oneDNN fp32 / bf16) vs eager.

    python benchmarks/bench_inference.py --peer /work/reference/.venv/bin/python

Random-init weights (speed does not depend on the values), N(0, 1) images, batch 32, 2 threads.
Rows: Paddle eager (float32, no_grad), the export of `paddlemix.tools.export` run by
`paddlemix.inference.InferenceEncoders` in fp32 and bf16, and with --peer open_clip's torch eager
in fp32, under bf16 autocast and with bf16 weights (inference_mode), run afterwards in that
interpreter.
images/s = batch / median time of --steps calls after --warmup calls (bf16 oneDNN needs ~3 calls to
create its kernels and reorder the weights).

Why Paddle Inference bf16 was slow (ViT-B-32, batch 32, 2 AMX cores; details in the export
report). Traced as the eager model computes, bf16 ran at 25-30 images/s, no faster than fp32 (28):
ONEDNN_VERBOSE=1 showed only the patch convolution and the final projection as AMX kernels. Every
block linear is `addmm` and attention is `einsum`; neither has a oneDNN kernel, so
fc_onednn_enable_pass and cpu_bfloat16_pass converted nothing and the blocks ran in Paddle's
native fp32 kernels. The export now traces linears as matmul + add (oneDNN fc,
`brgemm:avx10_1_512_amx`, bf16) and attention as head-major matmuls (bf16 AMX matmul and softmax):
~110 images/s bf16, 35 fp32. Left (cpu profile, enable_profile): fc 58 % of the time; the qkv fc
writes fp32 because its consumers (reshape, unbind) have no bf16 kernel, then a fp32 copy (reshape,
~2 ms) and a native unbind (~3 ms) per block, ~15 % in all; set_onednn_cache_capacity changes
nothing with one input shape. open_clip under bf16 autocast is slow in this torch (2.13): 67 % of
its time is aten::copy_ inside the attention's bmm; with bf16 weights it reaches ~170 images/s.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import paddle

from paddlemix import AutoConfig, AutoModel
from paddlemix.inference import InferenceEncoders
from paddlemix.utils.platform import cpu_supports_bf16
from paddlemix.models.registry import open_clip_name
from paddlemix.tools.export import export
from paddlemix.utils.cpu_process import prepare_cpu_process

from timing import machine_line, median_rate

# Runs in the open_clip interpreter: argv[1] is a JSON of model, batch, threads, steps, warmup.
PEER_SCRIPT = """
import json, statistics, sys, time
import open_clip, torch
args = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(args["threads"])
model = open_clip.create_model(args["model"]).eval()
images = torch.randn(args["batch"], 3, *model.visual.image_size)

def rate(bf16):
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for index in range(args["warmup"] + args["steps"]):
            start = time.perf_counter()
            model.encode_image(images)
            if index >= args["warmup"]:
                times.append(time.perf_counter() - start)
    return args["batch"] / statistics.median(times)

results = {"fp32": rate(False), "bf16 autocast": rate(True)}
model, images = model.to(torch.bfloat16), images.to(torch.bfloat16)
results["bf16 weights"] = rate(False)
print(json.dumps(results))
"""



def bench_paddle(args) -> dict:
    paddle.seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(args.model))
    model.eval()
    images = np.random.default_rng(0).standard_normal((args.batch, 3, *model.visual.image_size), dtype=np.float32)
    tensor = paddle.to_tensor(images)
    results = {}
    with paddle.no_grad():
        results["paddle eager fp32"] = median_rate(
            lambda: model.encode_image(tensor).numpy(), args.batch, args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as directory:
        export(model, directory)
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and not cpu_supports_bf16():
                print("no paddle inference bf16 row: this CPU has no bfloat16 instructions (AVX512-BF16, AMX)")
                continue
            encoders = InferenceEncoders(directory, precision, threads=args.threads)
            results[f"paddle inference {precision}"] = median_rate(
                lambda: encoders.encode_image(images), args.batch, args.steps, args.warmup)
    return results


def bench_open_clip(args) -> dict:
    settings = {"model": open_clip_name(args.model), "batch": args.batch, "threads": args.threads,
                "steps": args.steps, "warmup": args.warmup}
    output = subprocess.run([args.peer, "-c", PEER_SCRIPT, json.dumps(settings)],
                            check=True, capture_output=True, text=True).stdout
    rates = json.loads(output.strip().splitlines()[-1])
    return {f"open_clip eager {precision}": rate for precision, rate in rates.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paddlemix/CLIP/ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    args = parser.parse_args(argv)

    paddle.base.core.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = bench_paddle(args)
    if args.peer:
        results.update(bench_open_clip(args))
    print(machine_line(args.threads))
    print(f"{args.model} encode_image, batch {args.batch}, {args.threads} threads (images/s; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: other jobs skew results)")
    eager = results["paddle eager fp32"]
    peers = {"fp32": ["fp32"], "bf16": ["bf16 autocast", "bf16 weights"]}
    for row, rate in results.items():
        line = f"  {row:<30} {rate:7.1f}   x{rate / eager:.2f} paddle eager"
        if row.startswith("paddle inference"):
            for peer in peers[row.split()[-1]]:
                if f"open_clip eager {peer}" in results:
                    line += f"   x{rate / results[f'open_clip eager {peer}']:.2f} open_clip {peer}"
        print(line)


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
