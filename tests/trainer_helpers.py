"""What the trainer tests share: a tiny CLIP config, the entry script and its flags."""

import json
from pathlib import Path

from paddlemix.data.synthetic import write_shapes_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "clip" / "run_pretrain_dist.py"
TINY = {"model_type": "clip", "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def flags(setup, output_dir, *extra):
    return ["--model", str(setup / "tiny.json"), "--task_name", "coco_clip", "--data_dir", str(setup / "shapes"),
            "--output_dir", str(output_dir), "--max_steps", "8", "--per_device_train_batch_size", "16",
            "--learning_rate", "1e-3", "--warmup_steps", "2", "--logging_steps", "1", "--save_steps", "3",
            "--disable_tqdm", "true", "--report_to", "none", "--do_train", "--optimizer", "lamb", "--seed", "3",
            "--max_grad_norm", "1.0", *extra]


def make_setup(root: Path) -> Path:
    """The tiny model's config and a small shapes set under `root`."""
    (root / "tiny.json").write_text(json.dumps(TINY))
    write_shapes_dataset(root / "shapes", train_per_class=4)
    return root
