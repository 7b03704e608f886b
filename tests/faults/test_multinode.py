"""Two "nodes" on one machine: two `paddle.distributed.launch --nnodes 2 --master 127.0.0.1:PORT`
invocations of one process each train the tiny CLIP on the fixture LAION parts (a stream: its
resume position is per rank) to the losses of one node running 2 processes; one node killed
mid-run stops its peer within seconds instead of hanging it, and both relaunched with
`--resume_from_checkpoint auto` reach the uninterrupted losses. The Slurm script's SIGTERM
forwarding is checked with a stand-in `srun`."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from trainer_helpers import REPO_ROOT, SCRIPT, flags, step_losses

LAION_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "laion_part.filelist"
SBATCH = REPO_ROOT / "paddlemix" / "examples" / "slurm" / "train.sbatch"
STEPS = 24
TIMEOUT = 240  # seconds, for every launcher
PEER_EXIT_BOUND = 60  # seconds a node may take to stop once its peer died (gloo notices at once)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def training_flags(setup, output_dir, *extra):
    """The tiny CLIP on the fixture LAION parts, 4 samples a process, a checkpoint every 4 steps."""
    args = flags(setup, output_dir, "--max_steps", str(STEPS), "--per_device_train_batch_size", "4",
                 "--save_steps", "4", *extra)
    args[args.index("--task_name") + 1] = str(LAION_FIXTURE)
    data_dir = args.index("--data_dir")
    del args[data_dir : data_dir + 2]
    return args


def environment():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    return env


def launch_nodes(setup, output_dir, *extra):
    """Node 0 and node 1, each its own launcher (in its own session, as on two machines)."""
    port = free_port()
    nodes = []
    for rank in range(2):
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master", f"127.0.0.1:{port}",
                   "--rank", str(rank), "--nproc_per_node", "1", "--log_dir", f"{output_dir}_node{rank}_log",
                   str(SCRIPT), *training_flags(setup, output_dir, *extra)]
        nodes.append(subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    return nodes


def finish(process: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_node(process)
        output, _ = process.communicate()
        pytest.fail(f"launcher still running after {timeout} s:\n{output[-3000:]}")
    return output


def kill_node(launcher: subprocess.Popen) -> None:
    """SIGKILL a node: its launcher's process group and its trainers' (Paddle starts each trainer with
    setsid, so killing the launcher's group alone leaves the trainer training on)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher.pid)], capture_output=True, text=True,
                              timeout=30).stdout.split()
    for group in [launcher.pid, *map(int, children)]:
        kill_group(group)


def kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


def run_nodes(setup, output_dir, *extra):
    for node in launch_nodes(setup, output_dir, *extra):
        output = finish(node)
        assert node.returncode == 0, output[-4000:]


def losses_in_order(output_dir):
    losses = step_losses(output_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return [losses[step] for step in range(1, STEPS + 1)]


@pytest.fixture(scope="module")
def one_node_two_processes(setup, tmp_path_factory):
    """The reference: one launcher, --nproc_per_node 2."""
    output_dir = tmp_path_factory.mktemp("one_node") / "out"
    result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                             f"{output_dir}_log", str(SCRIPT), *training_flags(setup, output_dir)],
                            env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return losses_in_order(output_dir)


@pytest.mark.slow
def test_two_nodes_of_one_process_train_to_the_losses_of_one_node_with_two(setup, tmp_path, one_node_two_processes):
    started = time.time()
    run_nodes(setup, tmp_path / "out")
    print(f"two nodes: {STEPS} steps in {time.time() - started:.1f} s")
    assert losses_in_order(tmp_path / "out") == one_node_two_processes


@pytest.mark.slow
def test_a_killed_node_stops_its_peer_and_both_resume_to_the_uninterrupted_losses(setup, tmp_path,
                                                                                  one_node_two_processes):
    output_dir = tmp_path / "out"
    node0, node1 = launch_nodes(setup, output_dir)
    deadline = time.time() + TIMEOUT
    while len(step_losses(output_dir)) < 6 and node0.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed_at = max(step_losses(output_dir), default=0)
    kill_node(node1)
    killed = time.time()
    output = finish(node0, timeout=PEER_EXIT_BOUND)
    peer_exit = time.time() - killed
    finish(node1)
    assert node0.returncode != 0, f"node 0 should fail once node 1 died:\n{output[-3000:]}"
    assert 6 <= killed_at < STEPS, f"node 1 should die mid-run (at step {killed_at})"
    assert (output_dir / "checkpoint-4" / "checkpoint_complete").is_file()

    started = time.time()
    run_nodes(setup, output_dir, "--resume_from_checkpoint", "auto")
    print(f"node 1 killed after step {killed_at}; node 0 exited {peer_exit:.1f} s later; "
          f"resumed run {time.time() - started:.1f} s")
    assert losses_in_order(output_dir) == one_node_two_processes


def test_slurm_script_forwards_sigterm_to_the_launchers_and_waits_for_them(tmp_path):
    """`#SBATCH --signal=B:TERM@120` signals the batch shell only; its trap must pass SIGTERM on to srun
    (which hands it to the launchers) and wait for their checkpoint instead of exiting at once."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text(
        "#!/bin/bash\n"  # a launcher that takes a second to save after SIGTERM
        f"trap 'sleep 1; echo saved > {tmp_path}/forwarded; exit 0' TERM\n"
        f"echo \"$@\" > {tmp_path}/srun_args\n"
        "sleep 60 > /dev/null 2>&1 & wait\n"
    )
    (stub / "srun").chmod(0o755)
    (stub / "scontrol").write_text("#!/bin/bash\necho node-a\n")
    (stub / "scontrol").chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[a-b]",
               SLURM_NNODES="2", SLURM_JOB_ID="7", TRAIN_ARGS="--max_steps 10")
    script = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 30
    while not (tmp_path / "srun_args").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "srun_args").exists(), "the script did not start srun"
    script.send_signal(signal.SIGTERM)
    try:
        output, _ = script.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the batch script did not exit after SIGTERM")
    finally:
        kill_group(script.pid)  # the stand-in's sleep
    assert script.returncode == 0, output
    assert (tmp_path / "forwarded").read_text() == "saved\n", output
    srun_args = (tmp_path / "srun_args").read_text()
    for expected in ("paddle.distributed.launch", "--master node-a:", "--nnodes 2", "--resume_from_checkpoint auto",
                     "--max_steps 10"):
        assert expected in srun_args, srun_args
