"""Training a CLIP whose text tower is a pretrained language model (RoBERTa through PaddleNLP), with
its tokenizer read from the model folder: 2 processes equal 1, a preempted run resumes to the same
losses (continued by HF run_clip's rule, without --resume_from_checkpoint), the output folder holds
everything needed to load it again, and --overwrite_output_dir starts over."""

import json

import numpy as np
import pytest

from paddlemix import AutoModel
from paddlemix.processors import get_tokenizer
from paddlemix.processors.hf_tokenizer import HFTokenizer
from paddlemix.trainer.checkpoints import COMPLETE_MARKER

from test_trainer_distributed import train
from trainer_helpers import flags, preempt, run_to_end, step_losses


def roberta(setup, output_dir, *extra):
    return flags(setup, output_dir, "--model_name_or_path", str(setup / "roberta" / "config.json"), *extra)[2:]


def test_two_processes_train_the_roberta_clip_to_the_parameters_of_one(setup, tmp_path):
    model = ["--model", str(setup / "roberta" / "config.json")]
    one = train(setup, tmp_path / "one", 1, 16, *model)
    two = train(setup, tmp_path / "two", 2, 8, *model)
    assert one.keys() == two.keys() and any(key.startswith("text.transformer.encoder.") for key in one)
    for key, expected in one.items():
        np.testing.assert_allclose(two[key], expected, rtol=0, atol=1e-5, err_msg=key)


def test_a_preempted_roberta_clip_run_is_continued_to_the_uninterrupted_losses(setup, tmp_path):
    steps = ("--max_steps", "20")
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(roberta(setup, uninterrupted, *steps))
    expected = step_losses(uninterrupted)
    preempted = tmp_path / "preempted"
    stopped_at = preempt(roberta(setup, preempted, *steps), preempted, after_step=4)
    assert 4 <= stopped_at < 20 and (preempted / f"checkpoint-{stopped_at}" / COMPLETE_MARKER).is_file()
    output = run_to_end(roberta(setup, preempted, *steps))  # no --resume_from_checkpoint: continued all the same
    assert "holds checkpoints of an earlier run: continuing it" in output
    resumed = step_losses(preempted)
    assert sorted(resumed) == list(range(1, 21))
    for step in range(1, 21):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"

    # the output folder is a model folder: weights, config, tokenizer files, HF-style result files
    model = AutoModel.from_pretrained(str(uninterrupted))
    tokenizer = get_tokenizer(str(uninterrupted))
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.context_length == 16
    assert (get_tokenizer(model)(["a photo of a cat"]) == tokenizer(["a photo of a cat"])).all()
    train_results = json.loads((uninterrupted / "train_results.json").read_text())
    assert train_results["train_runtime"] > 0 and train_results["train_samples_per_second"] > 0
    assert json.loads((uninterrupted / "all_results.json").read_text())["train_runtime"] == train_results["train_runtime"]


def test_overwrite_output_dir_starts_over_and_removes_the_earlier_run(setup, tmp_path):
    output = tmp_path / "run"
    run_to_end(roberta(setup, output, "--max_steps", "4"))
    assert (output / "checkpoint-3" / COMPLETE_MARKER).is_file()
    log = run_to_end(roberta(setup, output, "--max_steps", "3", "--overwrite_output_dir"))
    assert "removing the earlier run's checkpoint-3" in log
    assert sorted(step_losses(output)) == [1, 2, 3] and not (output / "checkpoint-4").exists()
