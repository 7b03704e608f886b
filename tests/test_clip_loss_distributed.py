"""ClipLoss across 2 CPU processes gives the gradients of one process on the global batch.

One `paddle.distributed.launch` (gloo) runs every case of tests/distributed/clip_loss_worker.py;
the reference is the same model and batch computed here with world_size 1.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddlemix.models.loss import ClipLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_PATH = Path(__file__).resolve().parent / "distributed" / "clip_loss_worker.py"
WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 300


def _load_worker():
    spec = importlib.util.spec_from_file_location("clip_loss_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def _worker_logs(log_dir: Path) -> str:
    logs = sorted(log_dir.glob("workerlog.*"))
    return "\n".join(f"===== {log.name} =====\n{log.read_text(errors='replace')}" for log in logs)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory):
    """Launch the workers once; return {case: [npz of rank 0, npz of rank 1]}."""
    tmp = tmp_path_factory.mktemp("clip_loss_distributed")
    out_dir, log_dir = tmp / "out", tmp / "log"
    out_dir.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # On a CPU build the launcher reads CUDA_VISIBLE_DEVICES="" as one GPU named "" and fails
    # to place the second rank; without the variable it falls back to CPU with gloo.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        sys.executable, "-m", "paddle.distributed.launch",
        "--nproc_per_node", str(WORLD_SIZE),
        "--log_dir", str(log_dir),
        str(WORKER_PATH), str(out_dir),
    ]
    try:
        result = subprocess.run(
            command, env=env, cwd=tmp, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"launch timed out after {LAUNCH_TIMEOUT_S} s\n{_worker_logs(log_dir)}\n{error}")
    if result.returncode != 0:
        pytest.fail(
            f"launch exited with {result.returncode}\n{result.stdout}\n{result.stderr}\n"
            f"{_worker_logs(log_dir)}"
        )
    cases = [(name, split) for name in worker.VALID_CASES for split in worker.SPLITS]
    return {
        case: [dict(np.load(out_dir / f"{case[0]}.{case[1]}.rank{rank}.npz")) for rank in range(WORLD_SIZE)]
        for case in [*cases, (worker.NAIVE_CASE, "even")]
    }


@pytest.fixture(scope="module")
def single_process_reference():
    """(loss, {parameter name: gradient}) of the whole global batch in this process."""
    model = worker.build_model()
    image_features, text_features, scale = worker.encode(model, *worker.global_batch())
    loss = ClipLoss()(image_features, text_features, scale)
    loss.backward()
    return float(loss), worker.gradients(model)


@pytest.mark.parametrize("split", list(worker.SPLITS))
@pytest.mark.parametrize("case", list(worker.VALID_CASES))
def test_two_rank_gradients_equal_single_process_gradients(case, split, rank_outputs, single_process_reference):
    """Also when the ranks hold different numbers of rows (split 'uneven': 5 and 3)."""
    reference_loss, reference_grads = single_process_reference
    ranks = rank_outputs[(case, split)]

    # With local_loss each rank reports its share; the shares average to the global loss.
    mean_loss = np.mean([float(rank["loss"]) for rank in ranks])
    np.testing.assert_allclose(mean_loss, reference_loss, rtol=1e-10)
    for name, expected in reference_grads.items():
        for rank, outputs in enumerate(ranks):
            np.testing.assert_allclose(
                outputs[name], expected, rtol=1e-9, atol=1e-12, err_msg=f"{case} {split} rank {rank} {name}"
            )


def test_open_clip_gather_without_grad_shrinks_tower_gradients(rank_outputs, single_process_reference):
    """Proof that the comparison above can fail: open_clip's plain all_gather without the
    world_size factor leaves every tower gradient at 1/world_size after averaging."""
    _, reference_grads = single_process_reference
    naive_grads = rank_outputs[(worker.NAIVE_CASE, "even")][0]

    for name, expected in reference_grads.items():
        if name == "logit_scale":
            np.testing.assert_allclose(naive_grads[name], expected, rtol=1e-9)
        else:
            np.testing.assert_allclose(naive_grads[name], expected / WORLD_SIZE, rtol=1e-9, atol=1e-12)
