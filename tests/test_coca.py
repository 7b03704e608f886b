"""CoCa: converted open_clip checkpoints reproduce open_clip's features, caption logits, losses and
captions (fixtures made by tests/fixtures/make_coca_fixtures.py from open_clip 3.3.0)."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoModel
from paddlemix.external_ops import SWITCH
from paddlemix.models.coca import CoCaLoss, decode_captions
from paddlemix.models.modeling_utils import parameter_count
from paddlemix.models.registry import list_models
from paddlemix.tools.convert import main as convert_main
from paddlemix.models.loss_registry import build_loss, training_loss

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["tiny_coca", "tiny_coca_options"]
TOLERANCE = 1e-4  # max abs difference, float32
VOCAB = 64
SOT, EOT = VOCAB - 2, VOCAB - 1
CONTEXT_LENGTH = 12


@pytest.fixture(scope="module", params=NAMES)
def converted(request, tmp_path_factory):
    """(paddlemix model converted from the open_clip checkpoint, open_clip's recorded outputs)."""
    name = request.param
    output = tmp_path_factory.mktemp(name) / name
    exit_code = convert_main([
        "--source", "open_clip", "--model", str(FIXTURES / f"{name}.json"),
        "--checkpoint", str(FIXTURES / f"{name}.safetensors"), "--output", str(output),
    ])
    assert exit_code == 0
    return AutoModel.from_pretrained(str(output)), dict(np.load(FIXTURES / f"{name}.io.npz"))


def test_converted_checkpoint_matches_open_clip_features_and_caption_logits(converted):
    model, reference = converted
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    with paddle.no_grad():
        np.testing.assert_allclose(model.encode_image(image).numpy(), reference["image_features"], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(model.encode_text(text).numpy(), reference["text_features"], rtol=0, atol=TOLERANCE)
        out = model(image=image, input_ids=text)
        out.update(CoCaLoss(caption_weight=2.0, contrastive_weight=1.0).loss_parts(out))
    np.testing.assert_allclose(out["logits"].numpy(), reference["logits"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(out["labels"].numpy(), reference["labels"])
    for part in ("contrastive_loss", "caption_loss"):
        np.testing.assert_allclose(float(out[part]), reference[part], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(float(training_loss(build_loss(model.config), out)),
                               reference["contrastive_loss"] + reference["caption_loss"], rtol=0, atol=TOLERANCE)




@pytest.mark.parametrize("case", sorted(json.loads(str(np.load(FIXTURES / "tiny_coca.io.npz")["cases"]))))
def test_captions_equal_open_clip_token_for_token(converted, case):
    """Beam search (groups, repetition penalty, fixed length) and greedy decoding through the
    key/value caches give open_clip's tokens, which it computes without caches."""
    model, reference = converted
    options = json.loads(str(reference["cases"]))[case]
    tokens = model.generate(paddle.to_tensor(reference["image"]), sot_token_id=SOT, eos_token_id=EOT, **options)
    np.testing.assert_array_equal(tokens.numpy(), reference[f"tokens_{case}"])


def test_sampled_captions_repeat_with_the_seed_and_decode_to_text(converted):
    model, reference = converted
    image = paddle.to_tensor(reference["image"])
    options = dict(generation_type="top_p", top_p=0.9, temperature=1.5, seq_len=10, min_seq_len=2,
                   sot_token_id=SOT, eos_token_id=EOT)
    first = model.generate(image, seed=1, **options).numpy()
    assert np.array_equal(model.generate(image, seed=1, **options).numpy(), first)
    others = [model.generate(image, seed=seed, **options).numpy() for seed in (2, 3, 4)]
    assert any(other.shape != first.shape or not np.array_equal(other, first) for other in others)
    assert (first[:, 0] == SOT).all()


def test_decode_captions_stops_at_end_of_text():
    from paddlemix.processors import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=10)
    tokens = tokenizer(["a dog on a skateboard", "two cats"])
    assert decode_captions(tokens, tokenizer) == ["a dog on a skateboard", "two cats"]


def test_generation_longer_than_the_context_is_refused(converted):
    model, reference = converted
    with pytest.raises(ValueError, match="context_length"):
        model.generate(paddle.to_tensor(reference["image"]), seq_len=CONTEXT_LENGTH + 1)


def test_token_ids_outside_the_vocabulary_are_refused(converted):
    model, reference = converted
    with pytest.raises(ValueError, match="sot_token_id=49406 is outside the model's vocabulary of 64"):
        model.generate(paddle.to_tensor(reference["image"]), seq_len=8)


def test_recompute_gives_the_same_gradients(converted, monkeypatch):
    """Paddle's ops in both runs (blocks under recompute always use them), so the two must agree exactly."""
    monkeypatch.setenv(SWITCH, "0")
    model, reference = converted
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    model.train()
    grads = []
    try:
        for recompute in (False, True):
            model.clear_gradients()
            model.set_recompute(recompute)
            training_loss(build_loss(model.config), model(image=image, input_ids=text)).backward()
            grads.append({name: p.grad.numpy().copy() for name, p in model.named_parameters()})
    finally:
        model.set_recompute(False)
        model.clear_gradients()
        model.eval()
    assert any(name.startswith("text_decoder.cross_attn.") for name in grads[1])
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_registry_has_the_four_coca_models_with_open_clips_parameter_counts():
    expected = {
        "paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k": 253_560_065,
        "paddlemix/CoCa/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k": 253_560_065,
        "paddlemix/CoCa/CoCa-ViT-L-14-laion2B-s13B-b90k": 638_450_177,
        "paddlemix/CoCa/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k": 638_450_177,
    }
    assert set(expected) <= set(list_models())
    for name, count in expected.items():
        with paddle.LazyGuard():
            model = AutoModel.from_config(AutoConfig.from_pretrained(name))
        assert parameter_count(model) == count, name
        assert model.context_length == 76


def test_a_decoder_narrower_than_the_image_tokens_is_refused():
    config = AutoConfig.from_pretrained("paddlemix/CoCa/CoCa-ViT-B-32-laion2B-s13B-b90k")
    config.multimodal_cfg.width = 256
    with pytest.raises(ValueError, match="multimodal_cfg.width"):
        with paddle.LazyGuard():
            AutoModel.from_config(config)


def test_exported_encoders_equal_open_clip_features(converted, tmp_path):
    from paddlemix.inference import InferenceModel
    from paddlemix.tools.export import export

    model, reference = converted
    export(model, tmp_path / "export")
    exported = InferenceModel(tmp_path / "export")
    image, text = paddle.to_tensor(reference["image"]), paddle.to_tensor(reference["text"])
    np.testing.assert_allclose(exported.encode_image(image).numpy(), reference["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(exported.encode_text(text).numpy(), reference["text_features"], rtol=0, atol=TOLERANCE)
    assert exported.context_length == CONTEXT_LENGTH
