"""What the trainer tests share: a tiny CLIP config, the entry script, its flags, and running it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from paddlemix.data.synthetic import write_shapes_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "clip" / "run_pretrain_dist.py"
TINY = {"model_type": "clip", "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


# The tiny CLIP with a RoBERTa text tower (PaddleNLP), reading the small RoBERTa tokenizer that
# tests/fixtures/make_tokenizer_fixtures.py trained: `setup / "roberta"` is its model folder.
ROBERTA_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tokenizers" / "roberta_fast"
TINY_ROBERTA = {"model_type": "clip", "embed_dim": 32, "vision_cfg": TINY["vision_cfg"],
                "text_cfg": {"kind": "paddlenlp", "encoder": "roberta", "pooler_type": "pooler_output",
                             "proj_type": "linear", "context_length": 16,
                             "encoder_config": {"vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 2,
                                                "num_attention_heads": 2, "intermediate_size": 128,
                                                "max_position_embeddings": 18, "type_vocab_size": 1,
                                                "pad_token_id": 1, "layer_norm_eps": 1e-5,
                                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}}


def flags(setup, output_dir, *extra):
    return ["--model", str(setup / "tiny.json"), "--task_name", "coco_clip", "--data_dir", str(setup / "shapes"),
            "--output_dir", str(output_dir), "--max_steps", "8", "--per_device_train_batch_size", "16",
            "--learning_rate", "1e-3", "--warmup_steps", "2", "--logging_steps", "1", "--save_steps", "3",
            "--disable_tqdm", "true", "--report_to", "none", "--do_train", "--optimizer", "lamb", "--seed", "3",
            "--max_grad_norm", "1.0", *extra]


def make_setup(root: Path) -> Path:
    """The tiny model's config and a small shapes set under `root`."""
    (root / "tiny.json").write_text(json.dumps(TINY))
    shutil.copytree(ROBERTA_TOKENIZER, root / "roberta")
    (root / "roberta" / "config.json").write_text(json.dumps(TINY_ROBERTA))
    write_shapes_dataset(root / "shapes", train_per_class=4)
    return root


def launch(args, script: Path = SCRIPT) -> subprocess.Popen:
    """The entry `script` with `args` in a subprocess (stdout and stderr together)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_to_end(args, timeout=240, script: Path = SCRIPT) -> str:
    process = launch(args, script)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def preempt(args, output_dir: Path, after_step: int) -> int:
    """Launch a run logging to `output_dir`, SIGTERM it (as a scheduler preempting the job) once it
    has logged `after_step` steps, check it saved and exited 0; the step it stopped at."""
    process = launch(args)
    deadline = time.time() + 180
    while len(step_losses(output_dir)) < after_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-4000:]
    return max(step_losses(output_dir))


def step_losses(output_dir: Path) -> dict:
    """{step: loss} from the run's results.jsonl (empty before the first log)."""
    results = output_dir / "results.jsonl"
    if not results.exists():
        return {}
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def build_trainer(setup: Path, output_dir: Path, *extra):
    """A CLIPTrainer built in this process as the entry script builds it (model, data, trainer)."""
    from paddlemix.trainer.arguments import parse_arguments
    from paddlemix.processors import get_tokenizer
    from paddlemix.trainer.run import build_model, loss_of, train_dataset
    from paddlemix.trainer.trainer import CLIPTrainer

    model_args, data_args, args = parse_arguments(flags(setup, output_dir, *extra))
    model = build_model(model_args, args)
    return CLIPTrainer(model, args, train_dataset(data_args, model, args), get_tokenizer(model, model_args.context_length),
                       loss_of(model, model_args, args))
