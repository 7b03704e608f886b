"""Training-loader throughput (images/s) beside a torchvision/PIL pipeline doing the same work.

    python benchmarks/bench_loader.py --peer ../reference/.venv/bin/python

Both sides read the same JPEGs (about 500x375, written once into a temporary coco_karpathy set),
decode them with PIL, apply CLIP's training transform (random resized crop to 224, scale 0.9-1.0,
bicubic, normalise), tokenize the captions and collate batches of 32, with 0, 1 and 2 worker
processes. images/s = images delivered / wall time of one pass after a warm-up batch. The peer is
torch's DataLoader with open_clip's own train transform and tokenizer.
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
from PIL import Image

from paddlemix.data.coco import CocoKarpathyDataset
from paddlemix.data.loader import ImageTextLoader
from paddlemix.processors import image_transform
from paddlemix.utils.cpu_process import prepare_cpu_process

PEER_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import torch, open_clip
    from PIL import Image
    torch.set_num_threads(1)
    root, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    records = json.load(open(f"{root}/annotations/coco_karpathy_train.json"))
    _, train_transform, _ = open_clip.create_model_and_transforms("ViT-B-32")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(records)
        def __getitem__(self, i):
            image = Image.open(f"{root}/images/{records[i]['image']}")
            return train_transform(image), tokenizer(records[i]["caption"])[0]

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=batch, shuffle=True, num_workers=workers)
    iterator = iter(loader)
    next(iterator)
    start, count = time.perf_counter(), 0
    for images, _ in iterator:
        count += images.shape[0]
    print(json.dumps({"images_per_s": count / (time.perf_counter() - start)}))
''')


def write_jpegs(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    records = []
    for index in range(count):
        # smooth random content compresses like a photo (pure noise would be unrealistically large)
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(root / "images" / f"{index}.jpg",
                                                                               quality=90)
        records.append({"image": f"{index}.jpg", "caption": f"a photo number {index} of something"})
    (root / "annotations" / "coco_karpathy_train.json").write_text(json.dumps(records))


def time_paddlemix(root: Path, workers: int, batch: int) -> float:
    dataset = CocoKarpathyDataset(root / "annotations" / "coco_karpathy_train.json", root / "images",
                                  image_transform(224, is_train=True))
    iterator = iter(ImageTextLoader(dataset, batch_size=batch, num_workers=workers, seed=0))
    next(iterator)
    start, count = time.perf_counter(), 0
    for batch_data in iterator:
        count += int(batch_data["image"].shape[0])
    return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peer", default=None, help="python of the open_clip reference venv")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        write_jpegs(root, args.images)
        script = Path(tmp) / "peer.py"
        script.write_text(PEER_SCRIPT)
        print(f"{args.images} JPEGs of 500x375, train transform 224, batch {args.batch_size} (images/s)")
        for workers in args.workers:
            ours = time_paddlemix(root, workers, args.batch_size)
            line = f"  {workers} workers: paddlemix {ours:7.1f}"
            if args.peer:
                result = subprocess.run([args.peer, str(script), str(root), str(workers), str(args.batch_size)],
                                        check=True, capture_output=True, text=True)
                peer = json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]
                line += f"   torchvision {peer:7.1f}   ratio {ours / peer:.2f}"
            print(line)


if __name__ == "__main__":
    prepare_cpu_process()
    sys.exit(main())
