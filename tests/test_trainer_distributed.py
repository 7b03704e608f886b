"""Data-parallel training on 2 CPU processes (gloo) reaches the parameters of one process training
on the doubled batch, with and without sharding stage1 of the optimizer."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from trainer_helpers import REPO_ROOT, SCRIPT, flags

STEPS = ["--max_steps", "10", "--weight_decay", "0.1",
         # A larger epsilon keeps Adam-type updates of (mathematically) zero gradients, such as the
         # key bias's, from amplifying float round-off into lr-sized steps that differ between runs.
         "--adam_epsilon", "1e-4"]


def train(setup, output_dir, processes, batch, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    args = [*flags(setup, output_dir, *STEPS, *extra), "--per_device_train_batch_size", str(batch)]
    launcher = [] if processes == 1 else ["-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
                                          "--log_dir", str(output_dir) + "_log"]
    result = subprocess.run([sys.executable, *launcher, str(SCRIPT), *args], env=env, capture_output=True,
                            text=True, timeout=300)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((output_dir.parent).glob("*_log/workerlog.*")))
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{logs}"
    return {k: v.numpy() for k, v in paddle.load(str(output_dir / "model_state.pdparams")).items()}


@pytest.fixture(scope="module")
def single_process(setup, tmp_path_factory):
    return train(setup, tmp_path_factory.mktemp("one") / "out", 1, 16)


@pytest.mark.parametrize("sharding", [[], ["--sharding", "stage1", "--sharding_parallel_degree", "2"]],
                         ids=["data_parallel", "sharding_stage1"])
def test_two_processes_train_to_the_parameters_of_one_with_the_doubled_batch(setup, single_process, tmp_path,
                                                                             sharding):
    two = train(setup, tmp_path / "out", 2, 8, *sharding)
    assert two.keys() == single_process.keys()
    for key, expected in single_process.items():
        np.testing.assert_allclose(two[key], expected, rtol=0, atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def single_process_siglip(setup, tmp_path_factory):
    return train(setup, tmp_path_factory.mktemp("one_siglip") / "out", 1, 16, "--loss", "siglip")


@pytest.mark.parametrize("batching", [["8"], ["4", "--gradient_accumulation_steps", "2"]],
                         ids=["batch_8", "accumulated_2x4"])
def test_two_processes_with_the_sigmoid_loss_train_to_the_parameters_of_one(setup, single_process_siglip, tmp_path,
                                                                            batching):
    """The sigmoid loss's ring of text features, under the trainer, DataParallel and gradient accumulation."""
    batch, *extra = batching
    two = train(setup, tmp_path / "out", 2, int(batch), "--loss", "siglip", "--siglip_chunk", "3", *extra)
    assert "logit_bias" in two and two.keys() == single_process_siglip.keys()
    for key, expected in single_process_siglip.items():
        np.testing.assert_allclose(two[key], expected, rtol=0, atol=1e-5, err_msg=key)
