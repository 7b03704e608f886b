"""A training step of a CLIP with a pretrained-language-model text tower equals transformers'
VisionTextDualEncoderModel's: with the same weights and one padded batch, paddlemix's training loss
(the loss its config names, as the trainer builds it) is transformers' `return_loss=True` loss (clip_loss
over the batch), and the gradient of every parameter, mapped to transformers' names, is transformers'.
paddlemix clamps logit_scale at ln(100); at transformers' initial 2.6592 the clamp changes nothing.
Both models train with dropout 0, so training mode is deterministic.
Fixtures: tests/fixtures/make_dual_encoder_fixtures.py (tiny CLIP vision tower + tiny RoBERTa or BERT).
"""

from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models.checkpoint_formats.export import export_files
from paddlemix.models.loss_registry import build_loss, training_loss
from paddlemix.tools.convert import convert

FIXTURES = Path(__file__).parent / "fixtures" / "dual_encoder"
# float32 against float32 in another framework, sums taken in another order. A gradient's entries are
# compared relative to its largest one: an embedding row's gradient sums every token's, and an entry
# that nearly cancels keeps the rounding of the large terms (1.6e-6 in a 1.27 row of BERT's token types).
RTOL, ATOL = 1e-5, 1e-6


def assert_close_to_scale(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """|actual - expected| <= ATOL + RTOL * max|expected|, entry by entry."""
    assert actual.shape == expected.shape, name
    difference, scale = np.abs(actual - expected).max(), np.abs(expected).max()
    assert difference <= ATOL + RTOL * scale, f"{name}: max difference {difference:.3g} at scale {scale:.3g}"


def paddlemix_step(family: str, tmp_path: Path):
    """(loss, {transformers' parameter name: gradient}) of one paddlemix training step on the fixture batch."""
    io = np.load(FIXTURES / f"step_{family}.io.npz")
    model = AutoModel.from_pretrained(convert("hf", None, FIXTURES / f"step_{family}", tmp_path / family))
    model.train()
    loss = training_loss(build_loss(model.config), model(image=paddle.to_tensor(io["image"]),
                                                         input_ids=paddle.to_tensor(io["input_ids"])))
    loss.backward()
    grads = {name: param.grad.numpy() for name, param in model.named_parameters()}
    # the checkpoint mapping, read as transformers' export does: names, qkv split, Linear layout
    return float(loss), export_files("hf", model.config, grads)["model.safetensors"], io


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_loss_and_every_gradient_equal_transformers(family, tmp_path):
    loss, grads, io = paddlemix_step(family, tmp_path)
    expected = {name[len("grad/"):]: io[name] for name in io.files if name.startswith("grad/")}
    np.testing.assert_allclose(loss, io["loss"], rtol=RTOL, atol=ATOL)
    assert set(grads) == set(expected)
    for name, grad in expected.items():
        assert_close_to_scale(grads[name], grad, name)
