"""One rank of the 2-process sampler check: writes the (sample index, token ids) it read in one epoch.

Launched as `python -m paddle.distributed.launch --nproc_per_node 2 sampler_worker.py SHAPES_ROOT OUT`.
"""

import json
import os
import sys

import paddle.distributed as dist

from paddlemix.data.coco import coco_karpathy
from paddlemix.data.loader import ImageTextLoader
from paddlemix.processors import SimpleTokenizer, image_transform
from paddlemix.utils.distributed import run_script


def main(root: str, out_dir: str) -> None:
    dist.init_parallel_env()
    dataset = coco_karpathy("train", image_transform(32, is_train=False), data_dir=root)
    loader = ImageTextLoader(dataset, batch_size=4, tokenizer=SimpleTokenizer(context_length=16), seed=1, num_workers=1)
    rows = [ids for batch in loader for ids in batch["input_ids"].numpy().tolist()]
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(rows, handle)


if __name__ == "__main__":
    run_script(main, sys.argv[1], sys.argv[2])
