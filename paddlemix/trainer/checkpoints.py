"""Which checkpoint a run resumes from, whether it may, and which old checkpoints go.

A checkpoint directory `checkpoint-N` counts only once its `checkpoint_complete` marker exists
(written last). Optimizer, scheduler and RNG state are pickles that can run code when loaded, so
they are loaded only from checkpoints inside the run's own `--output_dir`, which this run (or an
earlier launch of it) wrote; model weights are always read with the restricted reader
(`paddlemix.models.weights_file.read_pdparams`).
"""

import json
import shutil
from pathlib import Path
from typing import List, Optional

from ..utils.log import logger

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete"  # written last: a checkpoint without it is partial and ignored
TRAINER_STATE = "paddlemix_state.json"  # the data position, beside PaddleNLP's own trainer state
PADDLENLP_STATE = "trainer_state.json"  # PaddleNLP's: global_step among others
RESULTS_LOG = "results.jsonl"  # one JSON line per logging step


def complete_checkpoints(output_dir: str) -> List[Path]:
    """Complete checkpoint directories under `output_dir`, oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(resume_from_checkpoint: Optional[str], output_dir: str) -> Optional[str]:
    """`auto`: the latest complete checkpoint if any (else a fresh start); `latest`: it, or an error;
    a path: that checkpoint, which must be complete and inside `output_dir` (see module docstring)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint in ("auto", "latest"):
        found = complete_checkpoints(output_dir)
        if found:
            return str(found[-1])
        if resume_from_checkpoint == "latest":
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
        return None
    path = Path(resume_from_checkpoint)
    if Path(output_dir).resolve() not in path.resolve().parents:
        raise PermissionError(
            f"--resume_from_checkpoint {path}: not inside --output_dir {output_dir}. A checkpoint's optimizer, "
            "scheduler and RNG files are pickles that can run code, so they are loaded only from the run's own "
            f"output directory. To start from that checkpoint's weights (read without running code), pass "
            f"--pretrained {path} instead; to continue that run, pass its directory as --output_dir"
        )
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: not a complete checkpoint (no {COMPLETE_MARKER}; a save that was "
            f"interrupted leaves such a directory). Complete ones: {[p.name for p in complete_checkpoints(output_dir)]}"
        )
    return str(path)


def remove_previous_run(output_dir: str) -> None:
    """Remove an earlier run's checkpoints (complete or partial) and training log from `output_dir`."""
    root = Path(output_dir)
    old = sorted(root.glob(f"{CHECKPOINT_PREFIX}*")) + [path for path in (root / RESULTS_LOG,) if path.exists()]
    if old:
        logger.warning("--overwrite_output_dir: removing the earlier run's %s", ", ".join(p.name for p in old))
    for path in old:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def checkpoint_step(checkpoint: str) -> int:
    """The global step a complete checkpoint was saved at."""
    return int(json.loads((Path(checkpoint) / PADDLENLP_STATE).read_text())["global_step"])


def check_same_batch(saved: dict, checkpoint: str, batch_size: int, world_size: int) -> None:
    """Refuse to resume at another per-device batch size or number of processes: the data position
    is kept in batches, which would then stand for other samples. (A checkpoint from before these
    were recorded is not checked.)"""
    for flag, now, key in (("--per_device_train_batch_size", batch_size, "per_device_train_batch_size"),
                           ("the number of processes (--nproc_per_node x --nnodes)", world_size, "world_size")):
        if key in saved and saved[key] != now:
            raise ValueError(
                f"{checkpoint} was saved with {flag} {saved[key]}; this run has {now}. The data position is kept "
                f"in batches, so resuming at another size would skip the wrong samples. Resume with {flag} "
                f"{saved[key]}, or start the new setting in a fresh --output_dir (with --pretrained {checkpoint} "
                "for its weights)"
            )


def remove_old_checkpoints(output_dir: str, limit: Optional[int], keep: List[Optional[str]]) -> None:
    """Keep the newest `limit` complete checkpoints (all when `limit` is unset or <= 0), and `keep`
    (the checkpoint this run resumed from: never deleted while the run may still need it)."""
    if not limit or limit <= 0:
        return
    kept = {Path(p).resolve() for p in keep if p}
    for path in complete_checkpoints(output_dir)[:-limit]:
        if path.resolve() not in kept:
            logger.info("removing %s: --save_total_limit %d", path, limit)
            shutil.rmtree(path)
