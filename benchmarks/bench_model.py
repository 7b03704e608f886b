"""Speed of a paddlemix model (encode_image and a training step), optionally beside open_clip in the same run.

    python benchmarks/bench_model.py --model paddlemix/CLIP/ViT-B-32 --infer-batch 32 --skip-train \
        --peer ../reference/.venv/bin/python
    python benchmarks/bench_model.py --model paddlemix/EVA/EVA02-CLIP-B-16 --infer-batch 8 --train-batch 8 \
        --peer ../reference/.venv/bin/python

Random-init weights, N(0, 1) images and random token ids (speed does not depend on the values),
float32. Peak memory is each process's maximum resident set (model, optimizer state, activations). encode_image: eval mode, no gradients. Training step: forward + ClipLoss + backward +
AdamW step, as open_clip's reference bench does. images/s = batch / median time after warm-up.
`--threads` sets the intra-op threads of both frameworks (Paddle alone defaults to 1). With
--peer, open_clip runs afterwards through ../shared/reference/openclip_bench.py in that
interpreter (never at the same time), on its architecture of the same name.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import paddle

from paddlemix import AutoConfig, AutoModel
from paddlemix.external_ops import fused_ops
from paddlemix.models.loss_registry import build_loss, training_loss
from paddlemix.models.registry import open_clip_name
from paddlemix.utils.cpu_process import prepare_cpu_process

from timing import machine_line, median_rate, peak_memory_mib

REFERENCE_BENCH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openclip_bench.py"



def bench_paddlemix(args) -> dict:
    config = AutoConfig.from_pretrained(args.model)
    model = AutoModel.from_config(config)
    rng = np.random.default_rng(0)
    size, text_cfg = model.visual.image_size, model.config.text_cfg
    results = {}
    if not args.skip_infer:
        images = paddle.to_tensor(rng.standard_normal((args.infer_batch, 3, *size), dtype=np.float32))
        model.eval()
        with paddle.no_grad():
            results["encode_image"] = median_rate(
                lambda: model.encode_image(images).numpy(), args.infer_batch, args.steps, args.warmup
            )
    if not args.skip_train:
        images = paddle.to_tensor(rng.standard_normal((args.train_batch, 3, *size), dtype=np.float32))
        ids = rng.integers(1, text_cfg.vocab_size - 1, (args.train_batch, text_cfg.context_length))
        ids[:, -1] = text_cfg.vocab_size - 1
        ids = paddle.to_tensor(ids)
        model.train()
        # open_clip's bench optimizer: AdamW(lr 5e-4, wd 0.2, betas (0.9, 0.98), eps 1e-6)
        optimizer = paddle.optimizer.AdamW(5e-4, beta1=0.9, beta2=0.98, epsilon=1e-6, weight_decay=0.2,
                                           parameters=model.parameters())

        loss_fn = build_loss(model.config)

        def train_step():
            loss = training_loss(loss_fn, model(image=images, input_ids=ids))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)  # freed, as open_clip's zero_grad(set_to_none=True)
            float(loss)

        results["train_step"] = median_rate(train_step, args.train_batch, args.steps, args.warmup)
    return results


# Runs the reference bench, then prints this process's peak resident set (VmHWM, which unlike
# ru_maxrss does not carry over the forking parent's memory across exec). The reference bench builds
# SigLIP's loss as open_clip.SigLipLoss, which open_clip 3.3.0 exports only from open_clip.loss: the
# wrapper makes the name resolve first.
PEER_WRAPPER = (
    "import runpy, sys; import open_clip, open_clip.loss; open_clip.SigLipLoss = open_clip.loss.SigLipLoss; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
    "print('VmHWM', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
)


# Run by the peer: open_clip's config of a model, its HF tokenizer read from a local folder (offline, the hub's
# is out of reach), written where open_clip.add_model_config registers it under the same name.
LOCAL_TOKENIZER_CONFIG = (
    "import json, sys; from open_clip.factory import get_model_config; name, folder, out = sys.argv[1:]; "
    "config = get_model_config(name); config['text_cfg']['hf_tokenizer_name'] = folder; "
    "open(out, 'w').write(json.dumps(config))"
)


def bench_open_clip(args) -> dict:
    name = open_clip_name(args.model)
    options = ["--skip-text-infer", "--threads", str(args.threads),
               "--infer-batch", str(args.infer_batch), "--infer-steps", str(args.steps + args.warmup),
               "--infer-warmup", str(args.warmup), "--batch-size", str(args.train_batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    options += ["--skip-infer"] if args.skip_infer else []
    options += ["--skip-train"] if args.skip_train else []
    with tempfile.TemporaryDirectory() as tmp:
        model = ["--model", name]
        if args.peer_tokenizer:
            config_file = Path(tmp) / f"{name}.json"
            subprocess.run([args.peer, "-c", LOCAL_TOKENIZER_CONFIG, name, str(Path(args.peer_tokenizer).resolve()),
                            str(config_file)], check=True)
            model = ["--config", str(config_file)]
        command = [args.peer, "-c", PEER_WRAPPER, str(REFERENCE_BENCH), *model, *options]
        result_file = Path(tmp) / "open_clip.json"
        output = subprocess.run(command + ["--json", str(result_file)], check=True, capture_output=True, text=True).stdout
        raw = json.loads(result_file.read_text())
    results = {"peak_mib": int(output.split("VmHWM")[-1].split()[0]) / 1024}
    if "infer_image" in raw:
        results["encode_image"] = raw["infer_image"]["items_per_s"]
    if "train" in raw:
        results["train_step"] = raw["train"]["images_per_s"]
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paddlemix/CLIP/ViT-B-32")
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations of each phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    parser.add_argument("--peer-tokenizer", default=None,
                        help="a folder of the model's HF tokenizer files, for a peer model whose open_clip config "
                             "names a hub tokenizer (SigLIP): offline, open_clip cannot fetch it")
    args = parser.parse_args(argv)

    paddle.base.core.set_num_threads(args.threads)
    ours = bench_paddlemix(args)
    ours_peak = peak_memory_mib()
    peer = bench_open_clip(args) if args.peer else {}
    batches = {"encode_image": args.infer_batch, "train_step": args.train_batch}
    fused = ", fused ops" if fused_ops() is not None else ", Paddle's ops only"
    print(machine_line(args.threads))
    print(f"{args.model}{fused}, float32, {args.threads} threads (images/s)")
    for phase, rate in ours.items():
        line = f"  {phase:<12} batch {batches[phase]:>3}: paddlemix {rate:7.2f}"
        if phase in peer:
            line += f"   open_clip {peer[phase]:7.2f}   ratio {rate / peer[phase]:.2f}"
        print(line)
    line = f"  peak RSS of the whole process: paddlemix {ours_peak:,.0f} MiB"
    if args.peer:
        line += f"   open_clip {peer['peak_mib']:,.0f} MiB"
    print(line)


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
