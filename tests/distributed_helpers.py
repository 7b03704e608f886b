"""What the multi-process loss tests share: loading a worker module, and one launch of it on CPU processes."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300


def load_worker(path: Path):
    """The worker script at `path` as a module (its model and batch builders are the reference's too)."""
    sys.path.insert(0, str(path.parent))  # workers import each other's builders
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_logs(log_dir: Path) -> str:
    return "\n".join(f"===== {log.name} =====\n{log.read_text(errors='replace')}"
                     for log in sorted(log_dir.glob("workerlog.*")))


def launch_workers(worker_path: Path, world: int, tmp: Path) -> Path:
    """Run `worker_path OUT` under `paddle.distributed.launch` on `world` CPU processes (gloo) and return
    OUT, the folder the workers wrote to. A failed or hung launch fails the test with every worker's log."""
    out_dir, log_dir = tmp / "out", tmp / "log"
    out_dir.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # On a CPU build the launcher reads CUDA_VISIBLE_DEVICES="" as one GPU named "" and fails to place
    # the second rank; without the variable it falls back to CPU with gloo.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(world),
               "--log_dir", str(log_dir), str(worker_path), str(out_dir)]
    try:
        result = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"launch timed out after {LAUNCH_TIMEOUT_S} s\n{worker_logs(log_dir)[-6000:]}\n{error}")
    if result.returncode != 0:
        pytest.fail(f"launch exited with {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n"
                    f"{worker_logs(log_dir)[-6000:]}")
    return out_dir
