"""CoCa through the shared trainer: its entry script, the CoCa loss flags, and gradient accumulation
equal to the larger batch for the caption loss too."""

import json

import numpy as np
import paddle
import pytest

from paddlemix.models.coca import CoCaLoss
from paddlemix.models.loss import ClipLoss
from paddlemix.trainer.arguments import parse_arguments
from paddlemix.trainer.run import build_model, loss_of

from trainer_helpers import REPO_ROOT, flags, run_to_end, step_losses

SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "coca" / "run_pretrain_dist.py"
TINY_COCA = {
    "model_type": "coca", "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "head_width": 16, "layers": 2,
                   "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 5},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "embed_cls": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def coca_setup(setup):
    (setup / "tiny_coca.json").write_text(json.dumps(TINY_COCA))
    return setup


def coca_flags(setup, output_dir, *extra):
    args = flags(setup, output_dir, *extra)
    args[args.index("--model") + 1] = str(setup / "tiny_coca.json")
    return args


def test_gradient_accumulation_trains_like_the_larger_batch(coca_setup, tmp_path):
    """2 micro-batches of 8 reach the parameters of batches of 16: contrastive negatives from the whole
    batch, and the caption cross-entropy averaged over the whole batch's tokens (micro-batches hold
    different numbers of caption tokens, so averaging the micro-batch means would differ)."""
    steps = ["--max_steps", "4", "--adam_epsilon", "1e-4", "--save_steps", "1000"]
    run_to_end(coca_flags(coca_setup, tmp_path / "large", *steps), 300, SCRIPT)
    run_to_end(coca_flags(coca_setup, tmp_path / "accumulated", *steps, "--per_device_train_batch_size", "8",
                          "--gradient_accumulation_steps", "2"), 300, SCRIPT)
    large = paddle.load(str(tmp_path / "large" / "model_state.pdparams"))
    accumulated = paddle.load(str(tmp_path / "accumulated" / "model_state.pdparams"))
    assert any(key.startswith("text_decoder.") for key in large)
    for key in large:
        np.testing.assert_allclose(accumulated[key].numpy(), large[key].numpy(), rtol=0, atol=1e-5, err_msg=key)
    assert step_losses(tmp_path / "accumulated") == pytest.approx(step_losses(tmp_path / "large"), rel=1e-5)


def test_coca_loss_flags_set_the_weights(coca_setup, tmp_path):
    model_args, _, args = parse_arguments(coca_flags(coca_setup, tmp_path, "--coca_caption_loss_weight", "0.5"))
    model = build_model(model_args, args)
    loss_fn = loss_of(model, model_args, args)
    assert isinstance(loss_fn, CoCaLoss)
    assert (loss_fn.caption_weight, loss_fn.contrastive_weight) == (0.5, 1.0)
    images = paddle.randn([2, 3, 32, 32])
    input_ids = paddle.to_tensor([[49406, 320, 1929, 49407, 0], [49406, 320, 49407, 0, 0]], dtype="int64")
    out = model(image=images, input_ids=input_ids)
    out.update(loss_fn.loss_parts(out))
    unweighted = CoCaLoss(caption_weight=1.0)(out["image_features"], out["text_features"], out["logit_scale"],
                                             out["logits"], out["labels"])["caption_loss"]
    np.testing.assert_allclose(float(out["caption_loss"]), 0.5 * float(unweighted), rtol=1e-6)


def test_coca_loss_flags_on_a_clip_model_are_refused(setup, tmp_path):
    model_args, _, args = parse_arguments(flags(setup, tmp_path, "--coca_contrastive_loss_weight", "1.0"))
    with pytest.raises(ValueError, match="--coca_contrastive_loss_weight: not an option of the 'clip' loss"):
        loss_of(build_model(model_args, args), model_args, args)
    model_args, _, args = parse_arguments(flags(setup, tmp_path))
    assert isinstance(loss_of(build_model(model_args, args), model_args, args), ClipLoss)
