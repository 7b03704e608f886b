"""CoCa caption generation speed (captions/s) beside open_clip, on the same weights and images.

    python benchmarks/bench_caption.py --peer ../reference/.venv/bin/python

open_clip builds a random CoCa-ViT-B-32 (its decoder's text_projection, which open_clip leaves
uninitialised, set to N(0, width^-1/2)), saves it, and captions `--batch` N(0, 1) images with its
`generate` defaults (beam search, 6 beams in 3 groups, seq_len 30); paddlemix converts the same
weights (`paddlemix.tools.convert`) and captions the same images. 2 threads each, float32, one
warm-up call on 2 images first. The peer needs transformers (open_clip's generate imports it).
Also prints whether the two sides wrote the same tokens.
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

from paddlemix import AutoModel
from paddlemix.tools.convert import convert
from paddlemix.utils.cpu_process import prepare_cpu_process

from timing import machine_line

NAME = "paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k"
PEER_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np, torch, transformers
    from transformers.generation.beam_search import BeamSearchScorer
    transformers.BeamSearchScorer = BeamSearchScorer  # 4.57 no longer exports it where open_clip looks
    import open_clip
    from safetensors.torch import save_file
    torch.set_num_threads(2)
    torch.manual_seed(0)
    weights, images_file, tokens_file = sys.argv[1:4]
    model = open_clip.create_model("coca_ViT-B-32").eval()
    projection = model.text_decoder.text_projection
    torch.nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    images = torch.from_numpy(np.load(images_file))
    with torch.no_grad():
        model.generate(images[:2])
        start = time.perf_counter()
        tokens = model.generate(images)
        seconds = time.perf_counter() - start
    np.save(tokens_file, tokens.numpy())
    print(json.dumps({"captions_per_s": len(images) / seconds}))
''')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--peer", required=True, help="python of the open_clip reference venv (with transformers)")
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(2)
    images = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "images.npy", images)
        script = tmp / "peer.py"
        script.write_text(PEER_SCRIPT)
        output = subprocess.run([args.peer, str(script), str(tmp / "coca.safetensors"), str(tmp / "images.npy"),
                                 str(tmp / "tokens.npy")], check=True, capture_output=True, text=True)
        peer = json.loads(output.stdout.strip().splitlines()[-1])
        peer_tokens = np.load(tmp / "tokens.npy")
        convert("open_clip", NAME, tmp / "coca.safetensors", tmp / "paddlemix")
        model = AutoModel.from_pretrained(str(tmp / "paddlemix"))
    batch = paddle.to_tensor(images)
    model.generate(batch[:2])
    start = time.perf_counter()
    tokens = model.generate(batch).numpy()
    ours = args.batch / (time.perf_counter() - start)
    same = tokens.shape == peer_tokens.shape and bool((tokens == peer_tokens).all())
    print(machine_line(2))
    print(f"CoCa-ViT-B-32 beam search (6 beams, 3 groups, seq_len 30), batch {args.batch}, float32, 2 threads")
    print(f"  captions/s: paddlemix {ours:.3f}   open_clip {peer['captions_per_s']:.3f}   "
          f"ratio {ours / peer['captions_per_s']:.2f}")
    print(f"  same tokens as open_clip: {same} ({tokens.shape[1]} and {peer_tokens.shape[1]} tokens per caption)")


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
