"""Training-step speed of CLIP-RoBERTa in paddlemix beside transformers' VisionTextDualEncoderModel, in one run.

    python benchmarks/bench_dual_encoder.py --peer ../reference/.venv/bin/python
    python benchmarks/bench_dual_encoder.py --batch 16 --steps 5 --threads 2 --peer ../reference/.venv/bin/python

The model is the registry's `paddlemix/CLIP/clip-roberta` (transformers' contrastive-image-text guide:
CLIP ViT-B/32 + roberta-base, pooler output + bias-free Linear projections), random weights, float32,
train mode (dropout as configured). transformers builds the same architecture from the config.json
paddlemix's `--to hf` export writes for it. A step is forward, the CLIP loss (paddlemix: the loss its
config names, as the trainer builds it; transformers: return_loss=True), backward and an AdamW step
(open_clip's bench settings: lr 5e-4, weight decay 0.2, betas (0.9, 0.98), eps 1e-6), on the same batch:
N(0, 1) images and captions of random lengths padded to the context length. images/s = batch / median
step time after warm-up. transformers runs afterwards (never at the same time): --peer runs this file
again with --peer-side, which imports torch and transformers and nothing of paddlemix.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from timing import cpu_description, median_rate, peak_memory_mib

OPTIMIZER = dict(lr=5e-4, weight_decay=0.2, beta1=0.9, beta2=0.98, eps=1e-6)  # open_clip's bench settings
SHORTEST_CAPTION = 8  # tokens


def make_batch(config, batch: int) -> dict:
    """Images [batch, 3, H, W] and right-padded captions of random tokens, with their mask (speed does not
    depend on which tokens)."""
    rng = np.random.default_rng(0)
    encoder, length = config.text_cfg.encoder_config, config.text_cfg.context_length
    pad = encoder["pad_token_id"]  # 0 (BERT) or 1 (RoBERTa): the captions' ids are above it
    ids = np.full((batch, length), pad, dtype=np.int64)
    for row, count in enumerate(rng.integers(SHORTEST_CAPTION, length + 1, batch)):
        ids[row, :count] = rng.integers(pad + 1, encoder["vocab_size"], count)
    size = config.vision_cfg.image_size
    return {"image": rng.standard_normal((batch, 3, size, size), dtype=np.float32), "input_ids": ids,
            "attention_mask": (ids != pad).astype(np.int64)}


def paddlemix_rate(model, batch: dict, args) -> float:
    import paddle

    from paddlemix.models.loss_registry import build_loss, training_loss

    model.train()
    optimizer = paddle.optimizer.AdamW(OPTIMIZER["lr"], beta1=OPTIMIZER["beta1"], beta2=OPTIMIZER["beta2"],
                                       epsilon=OPTIMIZER["eps"], weight_decay=OPTIMIZER["weight_decay"],
                                       parameters=model.parameters())
    loss_fn = build_loss(model.config)
    images, ids = paddle.to_tensor(batch["image"]), paddle.to_tensor(batch["input_ids"])

    def step():
        loss = training_loss(loss_fn, model(image=images, input_ids=ids))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)  # freed, as torch's zero_grad() does
        float(loss)

    return median_rate(step, len(ids), args.steps, args.warmup)


def transformers_rate(folder: Path, args) -> float:
    """--peer-side: transformers' training step on the config.json and batch in `folder`."""
    import torch
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VisionTextDualEncoderModel(config=VisionTextDualEncoderConfig.from_pretrained(folder)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER["lr"], betas=(OPTIMIZER["beta1"], OPTIMIZER["beta2"]),
                                  eps=OPTIMIZER["eps"], weight_decay=OPTIMIZER["weight_decay"])
    with np.load(folder / "batch.npz") as batch:
        inputs = {"pixel_values": torch.from_numpy(batch["image"]), "input_ids": torch.from_numpy(batch["input_ids"]),
                  "attention_mask": torch.from_numpy(batch["attention_mask"])}

    def step():
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()

    return median_rate(step, len(inputs["input_ids"]), args.steps, args.warmup)


def run_peer(config, batch: dict, args) -> dict:
    from paddlemix.models.checkpoint_formats.hf_dual_encoder import hf_dual_encoder_config

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps(hf_dual_encoder_config(config)))
        np.savez(folder / "batch.npz", **batch)
        command = [args.peer, __file__, "--peer-side", str(folder), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]
        subprocess.run(command, check=True)
        return json.loads((folder / "result.json").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paddlemix/CLIP/clip-roberta",
                        help="a registry name or model directory whose text tower is a PaddleNLP one")
    parser.add_argument("--batch", type=int, default=8, help="images and captions per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both frameworks")
    parser.add_argument("--peer", default=None, help="python of the reference venv (torch + transformers)")
    parser.add_argument("--peer-side", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.peer_side is not None:  # in the reference venv: no paddle, no paddlemix
        rate = transformers_rate(args.peer_side, args)
        (args.peer_side / "result.json").write_text(json.dumps({"rate": rate, "peak_mib": peak_memory_mib()}))
        return

    import paddle

    from paddlemix import AutoConfig, AutoModel
    from paddlemix.utils.cpu_process import MKL_CPU_TYPE_VARIABLE, prepare_cpu_process

    prepare_cpu_process()  # on AMD, MKL's AVX2 kernels (PPMIX_MKL_AVX2_ON_AMD=0: as Paddle is installed)
    paddle.base.core.set_num_threads(args.threads)
    paddle.seed(0)
    config = AutoConfig.from_pretrained(args.model)
    batch = make_batch(config, args.batch)
    ours = paddlemix_rate(AutoModel.from_config(config), batch, args)
    ours_peak = peak_memory_mib()
    peer = run_peer(config, batch, args) if args.peer else None
    length = config.text_cfg.context_length
    print(f"{args.model} training step, float32, batch {args.batch}, {length} tokens "
          f"({int(batch['attention_mask'].sum())} real), {args.threads} threads, CPU {cpu_description()}, "
          f"{MKL_CPU_TYPE_VARIABLE}={os.environ.get(MKL_CPU_TYPE_VARIABLE, 'unset')} (images/s)")
    line = f"  paddlemix {ours:7.2f}"
    if peer:
        line += f"   transformers {peer['rate']:7.2f}   ratio {ours / peer['rate']:.2f}"
    print(line)
    line = f"  peak RSS: paddlemix {ours_peak:,.0f} MiB"
    if peer:
        line += f"   transformers {peer['peak_mib']:,.0f} MiB"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
