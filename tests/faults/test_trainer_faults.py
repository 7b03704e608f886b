"""Fault injection into the shared trainer: weights gone NaN behind a finite loss, a scheduler's
SIGTERM to the whole process group, a killed trainer's data workers, relaunching a finished run,
checkpoint rotation, resuming at another batch size, a failing save, a checkpoint without RNG state,
checkpoints from outside the run, and --fp16's loss scaling. Each test injects one fault and asserts
its outcome: a skipped step, a stop with a clear error, a saved checkpoint, an identical resume, or
the exit status."""

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.trainer.checkpoints import COMPLETE_MARKER, resolve_resume

from trainer_helpers import REPO_ROOT, SCRIPT, build_trainer, flags, launch, run_to_end, step_losses

TIMEOUT = 240  # seconds, for every training subprocess


def finish(process: subprocess.Popen, timeout: int = TIMEOUT) -> str:
    """Wait for `process` (killing it past `timeout`) and return its output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"training subprocess still running after {timeout} s:\n{output[-3000:]}")
    return output


def run_capture(args, timeout: int = TIMEOUT):
    """(exit status, output) of the entry script with `args`."""
    process = launch(args)
    output = finish(process, timeout)
    return process.returncode, output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_here(args):
    """run_pretrain in this process (no interpreter start-up: the relaunch tests stay fast)."""
    from paddlemix.trainer.run import run_pretrain

    return run_pretrain(args)


@pytest.fixture(scope="module")
def finished_run(setup, tmp_path_factory):
    """A complete 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    output = tmp_path_factory.mktemp("finished") / "run"  # in a subprocess: see the RNG-state test
    run_to_end(flags(setup, output, "--max_steps", "4", "--save_steps", "2"), timeout=TIMEOUT)
    return output


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


# ---- NaN weights behind a finite loss

def test_weights_gone_nan_stop_the_run_though_the_loss_stays_finite(setup, tmp_path):
    """lr 1e10 at batch 8: after step 1 the model gives NaN features, while Paddle's CPU cross_entropy
    still returns ln(8) for NaN logits. The steps are skipped and nothing NaN is saved: the run stops
    with an error at its first save."""
    output = tmp_path / "nan"
    status, log = run_capture(flags(setup, output, "--learning_rate", "1e10", "--per_device_train_batch_size", "8",
                                    "--max_steps", "8", "--save_steps", "3"))
    assert status != 0, log[-3000:]
    assert "non-finite loss or features" in log and "update skipped" in log
    assert "FloatingPointError" in log and "not saving them" in log and "--learning_rate" in log
    assert not (output / "model_state.pdparams").exists()
    assert not list(output.glob("checkpoint-*"))
    for line in (output / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"results.jsonl holds bare {name}"))


def test_a_skipped_step_after_real_ones_leaves_every_weight_unchanged(setup, tmp_path, monkeypatch):
    """Step 3's loss is NaN: its update is skipped outright (the optimizer's momentum must not move
    the weights either), steps 2 and 4 train."""
    from paddlemix.trainer import trainer as trainer_module
    from paddlemix.trainer.run import run_pretrain

    compute_loss = trainer_module.CLIPTrainer.compute_loss
    calls = {"n": 0}

    def nan_at_step_3(self, model, inputs, return_outputs=False):
        calls["n"] += 1
        loss, outputs = compute_loss(self, model, inputs, return_outputs=True)
        if calls["n"] == 3:
            loss = loss * float("nan")
        return (loss, outputs) if return_outputs else loss

    weights = {}
    clamp = trainer_module.LogitScaleClamp.on_step_end

    def snapshot(self, args, state, control, model=None, **kwargs):
        control = clamp(self, args, state, control, model=model, **kwargs)
        weights[state.global_step] = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        return control

    monkeypatch.setattr(trainer_module.CLIPTrainer, "compute_loss", nan_at_step_3)
    monkeypatch.setattr(trainer_module.LogitScaleClamp, "on_step_end", snapshot)
    run_pretrain(flags(setup, tmp_path / "out", "--max_steps", "4", "--save_steps", "1000", "--warmup_steps", "0"))
    for key in weights[2]:
        np.testing.assert_array_equal(weights[3][key], weights[2][key], err_msg=f"{key} moved in the skipped step")
    assert any(not np.array_equal(weights[4][k], weights[3][k]) for k in weights[3]), "step 4 should train"


def test_results_jsonl_writes_nonfinite_numbers_as_null_with_a_flag():
    from paddlemix.trainer.trainer import json_record

    line = json_record({"loss": float("nan"), "logit_scale": float("inf"), "step": 3, "lr": 0.1})
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in {line}"))
    assert record == {"loss": None, "logit_scale": None, "step": 3, "lr": 0.1,
                      "nonfinite": {"loss": "nan", "logit_scale": "inf"}}


# ---- signals and data workers

def _wait_for_step(output: Path, process: subprocess.Popen, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while len(step_losses(output)) < step and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the signal could be sent"


def _sigterm_the_group(setup, output: Path, *extra) -> int:
    """Start a 30-step run with 2 data workers in its own session, SIGTERM its whole process group
    after step 4 (as Slurm stops a job) and return the step it stopped at."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen([sys.executable, str(SCRIPT), *flags(setup, output, *extra)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_step(output, process, 4)
        os.killpg(process.pid, signal.SIGTERM)
        log = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, log[-4000:]
    assert "killed by signal" not in log
    stopped_at = max(step_losses(output))
    assert 4 <= stopped_at < 30, f"the SIGTERM should stop the run early (stopped at {stopped_at})"
    assert (output / f"checkpoint-{stopped_at}" / COMPLETE_MARKER).is_file()
    return stopped_at


def test_sigterm_to_the_process_group_saves_and_exits_0_with_data_workers(setup, tmp_path):
    _sigterm_the_group(setup, tmp_path / "out", "--max_steps", "30", "--dataloader_num_workers", "2")


@pytest.mark.slow
def test_sigterm_to_the_process_group_then_auto_resume_reproduces_the_uninterrupted_losses(setup, tmp_path):
    steps = ("--max_steps", "30", "--dataloader_num_workers", "2")
    run_to_end(flags(setup, tmp_path / "uninterrupted", *steps), timeout=TIMEOUT)
    expected = step_losses(tmp_path / "uninterrupted")
    _sigterm_the_group(setup, tmp_path / "preempted", *steps)
    run_to_end(flags(setup, tmp_path / "preempted", *steps, "--resume_from_checkpoint", "auto"), timeout=TIMEOUT)
    resumed = step_losses(tmp_path / "preempted")
    assert sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"


def _process_state(pid: int) -> str:
    """'R', 'S', ... from /proc; 'gone' once the process has been reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_data_worker_ignores_sigterm_and_dies_with_its_killed_parent(tmp_path):
    """What data_worker_init (every DataLoader's worker_init_fn) does in a forked worker."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, sys, time
        from paddlemix.utils.distributed import data_worker_init

        def worker():
            data_worker_init(0)
            print("ready", os.getpid(), flush=True)
            time.sleep(120)

        if __name__ == "__main__":
            multiprocessing.get_context("fork").Process(target=worker).start()
            time.sleep(120)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        line = parent.stdout.readline()
        assert line.startswith("ready"), line
        worker = int(line.split()[1])
        os.kill(worker, signal.SIGTERM)
        time.sleep(0.5)
        assert _process_state(worker) in "RS", "the worker should ignore SIGTERM and keep running"
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.time() + 10
        while _process_state(worker) not in ("gone", "Z") and time.time() < deadline:
            time.sleep(0.1)
        assert _process_state(worker) in ("gone", "Z"), "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
        if worker is not None and _process_state(worker) not in ("gone", "Z"):
            os.kill(worker, signal.SIGKILL)


# ---- relaunching, rotation, resuming

def test_a_finished_run_relaunched_with_auto_trains_nothing_and_keeps_its_final_model(setup, tmp_path, caplog):
    """--max_steps 5, --save_steps 2: the last step is saved too, and a relaunch finds the run complete."""
    output = tmp_path / "out"
    args = flags(setup, output, "--max_steps", "5", "--save_steps", "2")
    train_here(args)
    assert (output / "checkpoint-5" / COMPLETE_MARKER).is_file()
    final = output / "model_state.pdparams"
    digest, modified, results = sha256(final), final.stat().st_mtime_ns, (output / "results.jsonl").read_text()
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        train_here(args + ["--resume_from_checkpoint", "auto"])
    assert "the run is complete, nothing to train" in caplog.text
    assert max(step_losses(output)) == 5
    assert (output / "results.jsonl").read_text() == results
    assert sha256(final) == digest and final.stat().st_mtime_ns == modified


def test_save_total_limit_keeps_the_newest_checkpoints(setup, tmp_path):
    output = tmp_path / "out"
    train_here(flags(setup, output, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1"))
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-6"]


def test_save_total_limit_never_deletes_the_checkpoint_being_resumed_from(tmp_path):
    from paddlemix.trainer.checkpoints import remove_old_checkpoints

    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(str(step))
    remove_old_checkpoints(str(tmp_path), 1, keep=[str(tmp_path / "checkpoint-4")])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_resuming_with_another_batch_size_is_refused_naming_both_sizes(finished_run, setup, tmp_path):
    output = copy_of(finished_run, tmp_path)
    with pytest.raises(ValueError, match="--per_device_train_batch_size 16; this run has 8"):
        train_here(flags(setup, output, "--max_steps", "8", "--save_steps", "2", "--per_device_train_batch_size",
                         "8", "--resume_from_checkpoint", "auto"))
    assert max(step_losses(output)) == 4, "nothing may train"


def test_a_checkpoint_without_rng_state_resumes_with_a_warning(finished_run, setup, tmp_path):
    # a subprocess: optimizer state is keyed by parameter names, which another model in this process renames
    output = copy_of(finished_run, tmp_path)
    shutil.rmtree(output / "checkpoint-4")
    (output / "checkpoint-2" / "rng_state.pth").unlink()
    log = run_to_end(flags(setup, output, "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint",
                           "auto"), timeout=TIMEOUT)
    assert any("WARNING" in line and "has no rng_state.pth" in line for line in log.splitlines()), log[-3000:]
    assert max(step_losses(output)) == 4


# ---- untrusted files

def test_resuming_from_a_checkpoint_outside_the_output_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "downloaded" / "checkpoint-100"
    elsewhere.mkdir(parents=True)
    (elsewhere / COMPLETE_MARKER).write_text("100")
    with pytest.raises(PermissionError, match="--pretrained"):
        resolve_resume(str(elsewhere), str(tmp_path / "run"))
    inside = tmp_path / "run" / "checkpoint-3"
    inside.mkdir(parents=True)
    (inside / COMPLETE_MARKER).write_text("3")
    assert resolve_resume(str(inside), str(tmp_path / "run")) == str(inside)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_weights_are_read_without_running_code(setup, tmp_path):
    from paddlemix.models.weights_file import UnsafeWeightsFileError

    trainer = build_trainer(setup, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    state = {k: v.numpy() for k, v in trainer.model.state_dict().items()}
    state["payload"] = _RunsCode(marker)
    (checkpoint / "model_state.pdparams").write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(UnsafeWeightsFileError, match="refused to load"):
        trainer._load_from_checkpoint(str(checkpoint))
    assert not marker.exists()


# ---- failing saves

def test_a_failed_save_pretrained_leaves_the_previous_files_intact(setup, tmp_path, monkeypatch):
    from paddlemix import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.from_pretrained(str(setup / "tiny.json")))
    model.save_pretrained(tmp_path)
    before = {name: sha256(tmp_path / name) for name in ("config.json", "model_state.pdparams")}

    def disk_full(state, path, *args, **kwargs):
        Path(path).write_bytes(b"truncated")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paddle, "save", disk_full)
    with paddle.no_grad():
        model.logit_scale.set_value(model.logit_scale + 1)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path)
    assert {name: sha256(tmp_path / name) for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model_state.pdparams"]


# ---- --fp16: every backward through the GradScaler

LOSS_SCALE = 2.0 ** 15


def gradscaler_as_on_gpu(monkeypatch):
    """paddle.amp.GradScaler as PaddleNLP builds it for --fp16 on a GPU. Paddle enables it on GPU
    places only, and scales only once a float16 autocast has run: its construction is shown a GPU
    place and the AMP state says float16; scaling and unscaling then run on CPU."""
    from paddle.amp import grad_scaler
    from paddle.amp.auto_cast import amp_global_state

    monkeypatch.setattr(amp_global_state(), "amp_dtype", "float16")
    place = types.SimpleNamespace(is_gpu_place=lambda: True, is_xpu_place=lambda: False,
                                  is_custom_place=lambda: False)
    with monkeypatch.context() as patch:
        patch.setattr(grad_scaler, "_dygraph_tracer", lambda: types.SimpleNamespace(_expected_place=place))
        scaler = paddle.amp.GradScaler(init_loss_scaling=LOSS_SCALE)
    assert scaler.is_enable()
    return scaler


def _gradients(trainer, batches, scaler=None):
    """Each parameter's gradient after training_step on `batches` (micro-batches of one step);
    with `scaler`, as --fp16 would: scaled backward, then unscale_ as scaler.step does."""
    trainer.do_grad_scaling = scaler is not None
    trainer.scaler = scaler
    for param in trainer.model.parameters():
        param.clear_gradient(False)
    for batch in batches:
        trainer.training_step(trainer.model, batch)
    scaled = {name: p.grad.numpy().copy() for name, p in trainer.model.named_parameters() if p.grad is not None}
    if scaler is not None:
        scaler.unscale_(trainer.optimizer)
    unscaled = {name: p.grad.numpy().copy() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return scaled, unscaled


@pytest.mark.parametrize("micro_batches", [1, 2], ids=["plain_step", "gradient_accumulation"])
def test_fp16_loss_scaling_gives_the_fp32_gradients_after_unscaling(setup, tmp_path, monkeypatch, micro_batches):
    trainer = build_trainer(setup, tmp_path / "run", "--per_device_train_batch_size", str(16 // micro_batches),
                            "--gradient_accumulation_steps", str(micro_batches))
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    loader = iter(trainer.train_loader)
    batches = [next(loader) for _ in range(micro_batches)]
    _, fp32 = _gradients(trainer, batches)
    scaled, unscaled = _gradients(trainer, batches, gradscaler_as_on_gpu(monkeypatch))
    assert set(unscaled) == set(fp32) and len(fp32) > 10
    for name, grad in fp32.items():
        np.testing.assert_allclose(scaled[name], grad * LOSS_SCALE, rtol=1e-4, atol=1e-6 * LOSS_SCALE,
                                   err_msg=f"{name}: backward did not go through the scaler")
        np.testing.assert_allclose(unscaled[name], grad, rtol=1e-4, atol=1e-7, err_msg=name)
    assert math.isfinite(float(trainer.scaler._scale))


@pytest.mark.parametrize("signalled_here, signalled_elsewhere, stops", [
    (False, False, False), (True, False, True), (False, True, True), (True, True, True)])
def test_every_rank_stops_at_the_step_any_rank_was_signalled_in(monkeypatch, signalled_here, signalled_elsewhere,
                                                                 stops):
    """The save after a stop signal is collective, so the ranks agree on the step: an all-reduce (MAX)
    of the flag, stood in for here by a peer whose flag is `signalled_elsewhere`."""
    from paddlemix.trainer import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "get_world_size", lambda: 2)
    reduced = []

    def all_reduce(tensor, op):
        assert op == paddle.distributed.ReduceOp.MAX
        reduced.append(int(tensor.item()))
        tensor.set_value(paddle.to_tensor([max(int(tensor.item()), int(signalled_elsewhere))], dtype=tensor.dtype))

    monkeypatch.setattr(trainer_module.dist, "all_reduce", all_reduce)
    callback = trainer_module.PreemptionCallback()
    if signalled_here:
        callback._request(signal.SIGTERM, None)
    control = types.SimpleNamespace(should_save=False, should_training_stop=False)
    callback.on_step_end(None, None, control)
    assert reduced == [int(signalled_here)]  # every rank takes part in every step's agreement
    assert (control.should_save, control.should_training_stop) == (stops, stops)
