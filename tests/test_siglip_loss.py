"""The sigmoid loss (SigLIP) in one process: parity with open_clip's SigLipLoss, chunking, pair keys,
the `--loss` switch between the softmax and sigmoid losses, and the trainer end to end."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from paddlemix.models.coca.modeling import CoCa
from paddlemix.models.configuration import CoCaConfig, MultimodalConfig
from paddlemix.models.loss_registry import SIGLIP_INIT_LOGIT_BIAS, build_loss, switch_loss
from paddlemix.models.siglip_loss import SigLipLoss, sigmoid_pair_loss
from paddlemix.trainer.arguments import parse_arguments
from paddlemix.trainer.run import build_model, loss_of

from trainer_helpers import TINY, flags, run_to_end, step_losses

FIXTURE = Path(__file__).parent / "fixtures" / "siglip_loss.npz"  # open_clip's, make_siglip_loss_fixtures.py
TINY_VISION = VisionConfig(image_size=16, patch_size=8, width=16, head_width=8, layers=1)
TINY_TEXT = TextConfig(context_length=6, vocab_size=20, width=16, heads=2, layers=1)


def _loss_and_gradients(loss_fn, reference, **keys):
    inputs = {name: paddle.to_tensor(reference[name], stop_gradient=False)
              for name in ("image_features", "text_features", "logit_scale", "logit_bias")}
    loss = loss_fn(inputs["image_features"], inputs["text_features"], inputs["logit_scale"], inputs["logit_bias"],
                   **keys)
    loss.backward()
    return float(loss), {name: tensor.grad.numpy() for name, tensor in inputs.items()}


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_siglip_loss_and_gradients_equal_open_clips_at_any_chunk_size(chunk):
    reference = dict(np.load(FIXTURE))
    loss, gradients = _loss_and_gradients(SigLipLoss(chunk=chunk, world_size=1), reference)
    assert loss == pytest.approx(float(reference["loss"]), rel=1e-12)
    for name, gradient in gradients.items():
        np.testing.assert_allclose(gradient.reshape(reference[f"d_{name}"].shape), reference[f"d_{name}"],
                                   rtol=1e-10, atol=1e-12, err_msg=name)


def test_pairs_sharing_a_caption_are_left_out_of_the_loss():
    """Rows 0 and 3 share a caption: (0, 3) and (3, 0) are neither positive nor negative."""
    reference = dict(np.load(FIXTURE))
    keys = paddle.to_tensor([0, 1, 2, 0, 4, 5])
    loss, _ = _loss_and_gradients(SigLipLoss(chunk=4, world_size=1), reference, caption_keys=keys)
    image, text = reference["image_features"], reference["text_features"]
    logits = reference["logit_scale"] * image @ text.T + reference["logit_bias"]
    signs = 2 * np.eye(6) - 1
    terms = np.logaddexp(0, -signs * logits)  # -log sigmoid(z l)
    terms[0, 3] = terms[3, 0] = 0
    assert loss == pytest.approx(terms.sum() / 6, rel=1e-12)


@pytest.mark.parametrize("diagonal_positive", [True, False], ids=["own_captions", "another_ranks_captions"])
def test_sigmoid_pair_loss_of_a_block_equals_the_sum_of_its_pair_terms(diagonal_positive):
    """The ring's blocks of other ranks' texts are all negatives; a rank's own block has its diagonal positive."""
    reference = dict(np.load(FIXTURE))
    image, text = (paddle.to_tensor(reference[name]) for name in ("image_features", "text_features"))
    loss = sigmoid_pair_loss(image, text[:5], paddle.to_tensor(reference["logit_scale"]),
                             paddle.to_tensor(reference["logit_bias"]), diagonal_positive, chunk=2)
    logits = reference["logit_scale"] * reference["image_features"] @ reference["text_features"][:5].T
    logits += reference["logit_bias"]
    signs = -np.ones_like(logits)
    if diagonal_positive:
        signs[np.arange(5), np.arange(5)] = 1
    assert float(loss) == pytest.approx(np.logaddexp(0, -signs * logits).sum(), rel=1e-12)


def test_sigmoid_pair_loss_does_not_overflow_at_large_logits():
    image = paddle.to_tensor([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
    loss = sigmoid_pair_loss(image, image, paddle.to_tensor([500.0]), paddle.to_tensor([-250.0]), True)
    # positives: -log sigmoid(250) ~ 0; negatives: -log sigmoid(250) ~ 0 as well
    assert np.isfinite(float(loss)) and float(loss) < 1e-6


def test_siglip_loss_needs_the_models_logit_bias():
    loss_fn = SigLipLoss(world_size=1)
    outputs = {"image_features": paddle.ones([2, 4]), "text_features": paddle.ones([2, 4]),
               "logit_scale": paddle.to_tensor([10.0])}
    with pytest.raises(ValueError, match="--loss siglip"):
        loss_fn.loss_parts(outputs)


def test_bad_siglip_options_name_the_flag():
    with pytest.raises(ValueError, match="--siglip_exchange"):
        SigLipLoss(exchange="ring")
    with pytest.raises(ValueError, match="--siglip_chunk"):
        SigLipLoss(chunk=0)
    config = CLIPConfig(vision_cfg=TINY_VISION, text_cfg=TINY_TEXT, loss="siglip")
    with pytest.raises(ValueError, match="--coca_caption_loss_weight"):
        build_loss(config, options={"coca_caption_loss_weight": 1.0})
    with pytest.raises(ValueError, match="--siglip_exchange"):  # the softmax loss's flags do nothing here
        build_loss(config, local_loss=True, gather_with_grad=True)


def test_loss_siglip_adds_a_trainable_logit_bias_to_a_clip_model():
    model = CLIP(CLIPConfig(vision_cfg=TINY_VISION, text_cfg=TINY_TEXT))
    assert model.logit_bias is None
    switch_loss(model, "siglip")
    assert model.config.loss == "siglip" and model.config.init_logit_bias == SIGLIP_INIT_LOGIT_BIAS
    assert not model.logit_bias.stop_gradient and float(model.logit_bias) == SIGLIP_INIT_LOGIT_BIAS
    assert "logit_bias" in dict(model.named_parameters()) and "logit_bias" in model.no_weight_decay()
    outputs = model(image=paddle.randn([2, 3, 16, 16]), input_ids=paddle.randint(1, 20, [2, 6]))
    loss = build_loss(model.config).loss_parts(outputs)["contrastive_loss"]
    loss.backward()
    assert model.logit_bias.grad is not None and float(model.logit_bias.grad.abs().sum()) > 0


def test_loss_clip_freezes_a_siglip_models_logit_bias():
    """open_clip's #1076: under the softmax loss the bias gets no gradient; frozen, it stalls nothing."""
    model = CLIP(CLIPConfig(vision_cfg=TINY_VISION, text_cfg=TINY_TEXT, init_logit_bias=-10.0, loss="siglip"))
    switch_loss(model, "clip")
    assert model.config.loss == "clip" and model.logit_bias.stop_gradient
    outputs = model(image=paddle.randn([2, 3, 16, 16]), input_ids=paddle.randint(1, 20, [2, 6]))
    build_loss(model.config).loss_parts(outputs)["contrastive_loss"].backward()
    assert model.logit_bias.grad is None and model.logit_scale.grad is not None


def test_loss_flag_refuses_models_whose_loss_needs_more_than_features():
    config = CoCaConfig(embed_dim=16, vision_cfg=VisionConfig(image_size=16, patch_size=8, width=16, head_width=8,
                                                             layers=1, attentional_pool=True, attn_pooler_queries=4,
                                                             attn_pooler_heads=2),
                        text_cfg=TextConfig(context_length=6, vocab_size=20, width=16, heads=2, layers=1,
                                            embed_cls=True),
                        multimodal_cfg=MultimodalConfig(context_length=6, vocab_size=20, width=16, heads=2, layers=1))
    with pytest.raises(ValueError, match="'coca'"):
        switch_loss(CoCa(config), "siglip")
    with pytest.raises(ValueError, match="--loss coca"):
        switch_loss(CLIP(CLIPConfig(vision_cfg=TINY_VISION, text_cfg=TINY_TEXT)), "coca")


def test_trainer_loss_flag_builds_the_sigmoid_loss_and_saves_the_bias(setup, tmp_path):
    model_args, _, args = parse_arguments(flags(setup, tmp_path, "--loss", "siglip", "--siglip_chunk", "4"))
    model = build_model(model_args, args)
    loss_fn = loss_of(model, model_args, args)
    assert isinstance(loss_fn, SigLipLoss) and loss_fn.chunk == 4 and model.logit_bias is not None
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["loss"] == "siglip" and saved["init_logit_bias"] == SIGLIP_INIT_LOGIT_BIAS


def test_siglip_gradient_accumulation_trains_like_the_larger_batch(setup, tmp_path):
    """2 micro-batches of 8 reach the parameters of batches of 16 under the sigmoid loss too."""
    steps = ["--max_steps", "4", "--adam_epsilon", "1e-4", "--save_steps", "1000", "--loss", "siglip",
             "--siglip_chunk", "5"]
    run_to_end(flags(setup, tmp_path / "large", *steps))
    run_to_end(flags(setup, tmp_path / "accumulated", *steps, "--per_device_train_batch_size", "8",
                     "--gradient_accumulation_steps", "2"))
    large = paddle.load(str(tmp_path / "large" / "model_state.pdparams"))
    accumulated = paddle.load(str(tmp_path / "accumulated" / "model_state.pdparams"))
    assert "logit_bias" in large and float(large["logit_bias"]) != SIGLIP_INIT_LOGIT_BIAS  # it trained
    for key in large:
        np.testing.assert_allclose(accumulated[key].numpy(), large[key].numpy(), rtol=0, atol=1e-5, err_msg=key)
    assert step_losses(tmp_path / "accumulated") == pytest.approx(step_losses(tmp_path / "large"), rel=1e-5)
