"""run_script, the main of every entry script: a 2-process CPU run (gloo) ends with exit status 0 after
Python's exit handlers have run, and an entry that raises still fails the launch."""

import os
import subprocess
import sys
from pathlib import Path

from paddlemix.utils.distributed import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit
import sys
from pathlib import Path

import paddle.distributed as dist

from paddlemix.utils.distributed import run_script


def main(out_dir, fail):
    dist.init_parallel_env()
    rank = dist.get_rank()
    atexit.register(lambda: (Path(out_dir) / f"atexit{rank}").write_text("ran"))
    sys.stdout.write(f"rank {rank} output")
    if fail and rank == 1:
        raise RuntimeError("entry failed on rank 1")


run_script(main, sys.argv[1], sys.argv[2] == "fail")
"""


def launch(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    return subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(tmp_path / "log"), str(script), str(tmp_path), mode],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def worker_log(tmp_path: Path, rank: int) -> str:
    return (tmp_path / "log" / f"workerlog.{rank}").read_text(errors="replace")


def test_two_ranks_end_with_status_zero_after_their_exit_handlers_and_output(tmp_path):
    result = launch(tmp_path, "pass")
    assert result.returncode == 0, f"{result.stderr[-2000:]}\n{worker_log(tmp_path, 0)}\n{worker_log(tmp_path, 1)}"
    for rank in range(2):
        assert (tmp_path / f"atexit{rank}").read_text() == "ran"
        assert f"rank {rank} output" in worker_log(tmp_path, rank)


def test_an_entry_that_raises_fails_the_launch_with_its_traceback(tmp_path):
    result = launch(tmp_path, "fail")
    assert result.returncode != 0
    assert "RuntimeError: entry failed on rank 1" in worker_log(tmp_path, 1)


def test_one_process_returns_to_the_caller():
    calls = []
    assert run_script(calls.append, "entry ran") is None
    assert calls == ["entry ran"]
