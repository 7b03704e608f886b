"""The shared trainer end to end on a tiny CLIP and the embedded shapes set: flags, start-up checks,
atomic checkpoints, and a preempted-then-resumed run that reproduces the uninterrupted losses."""

import json
import logging

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.data.datasets import build_dataset
from paddlemix.data.loader import ImageTextCollator
from paddlemix.models.loss_registry import training_loss
from paddlemix.processors import get_tokenizer, image_transform
from paddlemix.trainer.arguments import parse_arguments
from paddlemix.trainer.checkpoints import COMPLETE_MARKER, resolve_resume
from paddlemix.trainer.run import build_model, check_platform

from duplicate_pairs_reference import masked_clip_loss
from trainer_helpers import flags, preempt, run_to_end, step_losses


def test_preempted_and_resumed_run_reproduces_the_uninterrupted_losses(setup, tmp_path):
    # 30 quick steps: the SIGTERM sent after step 4 must land well before the run would end by itself
    steps = ("--max_steps", "30")
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(flags(setup, uninterrupted, *steps))
    expected = step_losses(uninterrupted)
    assert sorted(expected) == list(range(1, 31))
    first = json.loads((uninterrupted / "results.jsonl").read_text().splitlines()[0])
    for key in ("loss", "logit_scale", "lr/visual.layer1", "lr/text.layer3", "interval_samples_per_second_per_device",
                "interval_data_seconds", "interval_runtime"):
        assert key in first, f"results.jsonl lacks {key}"

    preempted = tmp_path / "preempted"
    stopped_at = preempt(flags(setup, preempted, *steps), preempted, after_step=4)
    assert 4 <= stopped_at < 30, f"the SIGTERM should stop the run early (stopped at {stopped_at})"
    assert (preempted / f"checkpoint-{stopped_at}" / COMPLETE_MARKER).is_file()

    run_to_end(flags(setup, preempted, *steps, "--resume_from_checkpoint", "auto"))
    resumed = step_losses(preempted)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"


def test_an_interrupted_save_is_ignored_and_the_previous_checkpoint_used(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-3" / COMPLETE_MARKER).write_text("3")  # checkpoint-6: killed mid-save
    assert resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-3")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-6"), str(tmp_path))
    assert resolve_resume("auto", str(tmp_path / "empty")) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", str(tmp_path / "empty"))


def test_a_misspelled_flag_fails_naming_the_closest_valid_ones(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--visual_lrr", "2e-4", "--output_dir", "x"])
    assert "--visual_lr" in capsys.readouterr().err


def test_fp16_on_cpu_warns_once_and_trains_in_float32(caplog):
    _, _, args = parse_arguments(["--output_dir", "x", "--fp16", "true"])
    with caplog.at_level(logging.WARNING, logger="paddlemix"):
        check_platform(args)
    assert not args.fp16 and "GPUs only" in caplog.text


@pytest.mark.parametrize("cpu_has_bf16", [False, True], ids=["cpu_without_bf16", "cpu_with_bf16"])
def test_bf16_on_cpu_runs_the_gemms_in_bf16_where_the_cpu_can_and_warns_where_it_cannot(
        setup, tmp_path, monkeypatch, caplog, cpu_has_bf16):
    """Every forward pass (training and the final evaluation) asks the fused Linears for bf16 GEMMs on
    a CPU with bf16 instructions; elsewhere it asks for none, and one warning says the run is float32."""
    from paddlemix.models.layers import linear as linear_module
    from paddlemix.trainer.run import run_pretrain
    from paddlemix.utils import log, platform

    monkeypatch.setattr(platform, "cpu_supports_bf16", lambda: cpu_has_bf16)
    monkeypatch.setattr(log, "_already_warned", set())  # said once per process: maybe by an earlier test
    asked, original = set(), linear_module.fused_linear

    def spy(x, weight, bias, activation=None, bf16=False, ops=None):
        asked.add(bf16)
        return original(x, weight, bias, activation, bf16=bf16, ops=ops)

    monkeypatch.setattr(linear_module, "fused_linear", spy)
    with caplog.at_level(logging.INFO, logger="paddlemix"):
        run_pretrain(flags(setup, tmp_path / "run", "--max_steps", "1", "--warmup_steps", "0", "--save_steps", "1000",
                           "--bf16", "true"))
    assert asked == {cpu_has_bf16}
    assert ("no bfloat16 instructions" in caplog.text) != cpu_has_bf16


def test_stage2_sharding_and_tensor_parallel_on_cpu_fail_at_start_up(setup):
    _, _, args = parse_arguments(["--output_dir", "x", "--sharding", "stage2"])
    with pytest.raises(RuntimeError, match="stage2/stage3 sharding runs on GPUs only"):
        check_platform(args)
    model_args, _, args = parse_arguments(["--output_dir", "x", "--model", str(setup / "tiny.json"),
                                           "--tensor_parallel_degree", "2"])
    with pytest.raises(RuntimeError, match="needs GPUs"):
        build_model(model_args, args)


def test_gradients_are_freed_after_each_step_as_open_clip_does():
    """PaddleNLP's default zeroes them and keeps them through the next forward: a copy of the parameters
    more at the peak than open_clip's zero_grad(set_to_none=True); --release_grads false brings that back."""
    assert parse_arguments(["--output_dir", "x"])[2].release_grads
    assert not parse_arguments(["--output_dir", "x", "--release_grads", "false"])[2].release_grads


def test_gradient_accumulation_trains_like_the_larger_batch(setup, tmp_path):
    """2 micro-batches of 8 reach the parameters of batches of 16: the contrastive negatives are
    those of the whole batch (open_clip's feature-caching accumulation), not of each micro-batch."""
    steps = ["--max_steps", "5", "--adam_epsilon", "1e-4", "--save_steps", "1000"]
    run_to_end(flags(setup, tmp_path / "large", *steps))
    run_to_end(flags(setup, tmp_path / "accumulated", *steps, "--per_device_train_batch_size", "8",
                     "--gradient_accumulation_steps", "2"))
    large = paddle.load(str(tmp_path / "large" / "model_state.pdparams"))
    accumulated = paddle.load(str(tmp_path / "accumulated" / "model_state.pdparams"))
    for key in large:
        np.testing.assert_allclose(accumulated[key].numpy(), large[key].numpy(), rtol=0, atol=1e-5, err_msg=key)
    assert step_losses(tmp_path / "accumulated") == pytest.approx(step_losses(tmp_path / "large"), rel=1e-5)


def test_evaluation_during_training_logs_zero_shot_and_retrieval_metrics(setup, tmp_path):
    """--classification_eval (an ImageFolder: images/<class>/*, labels.txt, templates.txt) and --do_eval
    (retrieval on the val split) run every --eval_steps with the current towers, and at the end."""
    import shutil

    from paddlemix.data.synthetic import COLOURS

    folder = tmp_path / "colours"
    for colour in COLOURS:
        (folder / "images" / colour).mkdir(parents=True)
    records = json.loads((setup / "shapes" / "annotations" / "coco_karpathy_test.json").read_text())
    for record in records:
        colour = next(c for c in COLOURS if c in record["caption"][0].split())
        shutil.copy(setup / "shapes" / "images" / record["image"], folder / "images" / colour)
    (folder / "labels.txt").write_text("\n".join(f"{c} shape" for c in sorted(COLOURS)) + "\n")
    (folder / "templates.txt").write_text("a {}\na picture of a {}\n")
    output = tmp_path / "out"
    val_pairs = build_dataset("coco_clip", image_transform(32, is_train=False), split="val",
                              data_dir=str(setup / "shapes"))
    log = run_to_end(flags(setup, output, "--max_steps", "6", "--eval_steps", "3", "--do_eval",
                           "--classification_eval", str(folder), "--save_steps", "1000",
                           "--per_device_eval_batch_size", str(len(val_pairs))))
    assert "zero-shot classification task: colours: top1:" in log
    records = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval/colours/top1" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    for record in evaluations:
        assert record["eval/colours/num_samples"] == 48 and 0 <= record["eval/colours/top1"] <= 100
        assert 0 <= record["eval/retrieval/image_to_text_R@1"] <= record["eval/retrieval/image_to_text_R@5"] <= 1
        assert "eval_loss" in record

    # eval_loss of the final model: the masked contrastive loss of every val pair in one batch, from its definition
    reported = json.loads((output / "eval_results.json").read_text())
    assert reported["eval_loss"] == evaluations[-1]["eval_loss"]
    model = AutoModel.from_pretrained(str(output))
    samples = [val_pairs[i] for i in range(len(val_pairs))]
    batch = ImageTextCollator(get_tokenizer(model))(samples)
    with paddle.no_grad():
        out = model(image=paddle.to_tensor(batch["image"]), input_ids=paddle.to_tensor(batch["input_ids"]))
    expected = masked_clip_loss(out["image_features"].numpy(), out["text_features"].numpy(),
                                float(out["logit_scale"]), batch["image_keys"], batch["caption_keys"])[0]
    assert reported["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_nonfinite_losses_skip_their_update_refuse_the_save_and_too_many_in_a_row_stop_the_run(
        setup, tmp_path, monkeypatch):
    from paddlemix.trainer import trainer as trainer_module
    from paddlemix.trainer.run import run_pretrain

    def nan_loss(self, model, inputs, return_outputs=False):
        outputs = model(image=inputs["image"], input_ids=inputs["input_ids"])
        loss = training_loss(self.loss_fn, outputs) * float("nan")
        return (loss, outputs) if return_outputs else loss

    monkeypatch.setattr(trainer_module.CLIPTrainer, "compute_loss", nan_loss)
    before, trainer = None, None

    def capture(self, *args, **kwargs):
        nonlocal before, trainer
        trainer, before = self, {k: v.numpy().copy() for k, v in self.model.state_dict().items()}
        return original(self, *args, **kwargs)

    original = trainer_module.CLIPTrainer._inner_training_loop
    monkeypatch.setattr(trainer_module.CLIPTrainer, "_inner_training_loop", capture)
    # the last step was non-finite, so the weights that produced it are not saved as the final model
    with pytest.raises(FloatingPointError, match="non-finite values in the last 2 step"):
        run_pretrain(flags(setup, tmp_path / "skips", "--max_steps", "2", "--save_steps", "1000",
                           "--warmup_steps", "0", "--max_nonfinite_steps", "3"))
    after = trainer.model.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key].numpy(), value, err_msg=f"{key} changed by a skipped update")
    records = [json.loads(line) for line in (tmp_path / "skips" / "results.jsonl").read_text().splitlines()]
    assert records[-1]["skipped/nonfinite_loss"] == 2
    assert not (tmp_path / "skips" / "model_state.pdparams").exists()
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row"):
        run_pretrain(flags(setup, tmp_path / "stops", "--max_steps", "5", "--warmup_steps", "0",
                           "--max_nonfinite_steps", "3"))


def test_a_locked_image_tower_does_not_train(setup, tmp_path):
    from paddlemix import AutoConfig, AutoModel
    from paddlemix.trainer.run import run_pretrain

    run_pretrain(flags(setup, tmp_path / "lit", "--max_steps", "2", "--save_steps", "1000", "--warmup_steps", "0",
                       "--lock_image", "--seed", "5"))
    paddle.seed(5)  # the trainer's initial model
    initial = AutoModel.from_config(AutoConfig.from_pretrained(str(setup / "tiny.json"))).state_dict()
    trained = paddle.load(str(tmp_path / "lit" / "model_state.pdparams"))
    for key, value in initial.items():
        same = np.array_equal(trained[key].numpy(), value.numpy())
        assert same == key.startswith("visual."), f"{key}: {'unchanged' if same else 'changed'}"


def test_pretrained_weights_and_a_text_tower_from_another_model_are_loaded(setup, tmp_path):
    from paddlemix import AutoConfig, AutoModel
    from paddlemix.trainer.arguments import parse_arguments as parse
    from paddlemix.trainer.run import build_model

    donor = AutoModel.from_config(AutoConfig.from_pretrained(str(setup / "tiny.json")))
    rng = np.random.default_rng(0)  # every weight unlike a fresh model's (norms start at 1, biases at 0)
    for param in donor.parameters():
        param.set_value(paddle.to_tensor(rng.standard_normal(param.shape).astype("float32")))
    donor.save_pretrained(tmp_path / "donor")
    model_args, _, args = parse(["--output_dir", str(tmp_path), "--model", str(setup / "tiny.json"),
                                 "--pretrained_text_model", str(tmp_path / "donor")])
    model = build_model(model_args, args)
    for key, value in donor.state_dict().items():
        assert np.array_equal(model.state_dict()[key].numpy(), value.numpy()) == key.startswith("text."), key
    model_args, _, args = parse(["--output_dir", str(tmp_path), "--model", str(setup / "tiny.json"),
                                 "--pretrained", str(tmp_path / "donor")])
    model = build_model(model_args, args)
    for key, value in donor.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_a_run_resumed_from_a_checkpoint_at_an_epoch_end_goes_on_with_the_next_epoch(setup, tmp_path):
    """The shapes set gives 12 batches of 16 per epoch: a checkpoint at step 12 holds the loader at the
    end of epoch 0. Resumed, the run trains epoch 1 as the uninterrupted run did (it used to find no
    batch left in epoch 0 and crash inside PaddleNLP's loop)."""
    import shutil

    steps = ("--max_steps", "16", "--save_steps", "12")
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(flags(setup, uninterrupted, *steps))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-12", resumed / "checkpoint-12")
    run_to_end(flags(setup, resumed, *steps, "--resume_from_checkpoint", "auto"))
    expected = step_losses(uninterrupted)
    assert step_losses(resumed) == pytest.approx({step: expected[step] for step in range(13, 17)}, rel=1e-5)
