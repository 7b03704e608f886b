"""Tokenizer throughput (texts/s) of paddlemix, optionally beside open_clip's on the same texts.

    PYTHONPATH=. python benchmarks/bench_tokenizer.py [--num-texts 5000] [--peer /path/to/python]

`--peer` names a Python that has open_clip installed; it tokenizes the same texts in a subprocess,
and the script reports both speeds, their ratio, and whether the ids agree.
"""

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from paddlemix.utils.cpu_process import prepare_cpu_process

SUBJECTS = ["dog", "cat", "red car", "wooden table", "mountain lake", "bride", "pizza", "skyscraper",
            "vintage poster", "bicycle", "golden retriever puppy", "leather wallet", "coffee mug", "sunset"]
ADJECTIVES = ["beautiful", "old", "modern", "tiny", "huge", "blurry", "colorful", "black and white", "cozy"]
PLACES = ["on the beach", "in Paris", "at night", "in the snow", "on a white background", "in the kitchen",
          "near the river", "in Tokyo", "at the market"]
TEMPLATES = [
    "a photo of a {adj} {subj} {place}.",
    "{Adj} {subj} {place} - stock photo",
    "Men's {subj} | Free Shipping on orders over ${num}",
    "IMG_{num}.JPG",
    "{subj} {place}, {year}",
    "Close-up of a {adj} {subj}; shot on Canon EOS {num}D",
    "{Adj} {subj} wallpaper HD {num}x{num2}",
    "It's a {adj} {subj} -- we've never seen one {place}!!",
]
# A minority of captions carry what web alt-text has: accents, emoji, CJK and HTML entities.
EXTRAS = [" café crème", " 😀👍", " 東京の写真", " fish &amp; chips", " Москва", " naïve façade", " 🇯🇵"]


def make_captions(num_texts, seed=0):
    """Deterministic caption-like texts, about one in six with non-ASCII characters or HTML entities."""
    rng = random.Random(seed)
    captions = []
    for _ in range(num_texts):
        adj = rng.choice(ADJECTIVES)
        text = rng.choice(TEMPLATES).format(
            adj=adj, Adj=adj.capitalize(), subj=rng.choice(SUBJECTS), place=rng.choice(PLACES),
            num=rng.randint(1, 9999), num2=rng.randint(1, 9999), year=rng.randint(1900, 2024),
        )
        if rng.random() < 1 / 6:
            text += rng.choice(EXTRAS)
        captions.append(text)
    return captions


def time_tokenizer(make_tokenizer, texts, repeats=3):
    """Seconds to build, texts/s on the first pass (empty word cache) and best texts/s after it."""
    start = time.perf_counter()
    tokenizer = make_tokenizer()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = tokenizer(texts)
    cold = len(texts) / (time.perf_counter() - start)
    warm = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer(texts)
        warm = max(warm, len(texts) / (time.perf_counter() - start))
    return {"build_s": build_s, "cold_texts_per_s": cold, "warm_texts_per_s": warm}, np.asarray(ids)


PEER_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from bench_tokenizer import time_tokenizer
from open_clip.tokenizer import SimpleTokenizer
texts = json.load(open(sys.argv[2]))
stats, ids = time_tokenizer(SimpleTokenizer, texts)
np.save(sys.argv[3], ids)
print(json.dumps(stats))
"""


def run_peer(python, texts):
    """open_clip's timings on `texts`, measured by `python` in a subprocess, and its ids."""
    with tempfile.TemporaryDirectory() as tmp:
        texts_path, ids_path = Path(tmp) / "texts.json", Path(tmp) / "ids.npy"
        texts_path.write_text(json.dumps(texts))
        command = [python, "-c", PEER_SCRIPT, str(Path(__file__).parent), str(texts_path), str(ids_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1]), np.load(ids_path)


def report(name, stats):
    print(f"{name:>10}: build {stats['build_s']:.2f} s, first pass {stats['cold_texts_per_s']:,.0f} texts/s, "
          f"warm {stats['warm_texts_per_s']:,.0f} texts/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-texts", type=int, default=5000)
    parser.add_argument("--peer", help="python executable with open_clip installed, to compare against")
    args = parser.parse_args()
    # Imported here, not at the top, so the open_clip subprocess can import this module without paddlemix.
    from paddlemix.processors import SimpleTokenizer

    texts = make_captions(args.num_texts)
    stats, ids = time_tokenizer(SimpleTokenizer, texts)
    print(f"{len(texts)} caption-like texts, context length {ids.shape[1]}")
    report("paddlemix", stats)
    if args.peer:
        peer_stats, peer_ids = run_peer(args.peer, texts)
        report("open_clip", peer_stats)
        for key in ("cold_texts_per_s", "warm_texts_per_s"):
            print(f"paddlemix / open_clip {key}: {stats[key] / peer_stats[key]:.2f}x")
        print(f"ids identical to open_clip's: {np.array_equal(ids, peer_ids)}")


if __name__ == "__main__":
    prepare_cpu_process()
    main()
