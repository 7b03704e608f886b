"""DualEncoder.from_vision_text_pretrained assembles a CLIP from a pretrained image tower and a pretrained
language model as transformers' VisionTextDualEncoderModel.from_vision_text_pretrained does: the text
encoder's states and the parameter count are transformers', the CLIP's image features are kept (its
projection reused, which transformers does not do), the new weights start as transformers starts them,
and the saved folder loads with AutoModel and get_tokenizer. Fixtures: tests/fixtures/make_dual_encoder_fixtures.py.
"""

import math
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models import CoCaConfig, DualEncoder, parameter_count
from paddlemix.processors import get_tokenizer
from paddlemix.tools.convert import convert

FIXTURES = Path(__file__).parent / "fixtures" / "dual_encoder"
CLIP_FOLDER, TEXT_FOLDER = FIXTURES / "clip", FIXTURES / "roberta_mlm"
IO = np.load(FIXTURES / "assembled.io.npz")
TOLERANCE = 1e-5  # max abs difference, float32
CLIP_EMBED_DIM, TEXT_WIDTH = 16, 32  # the fixture CLIP's projection width, the RoBERTa's hidden size


@pytest.fixture(scope="module")
def assembled() -> DualEncoder:
    paddle.seed(0)
    return DualEncoder.from_vision_text_pretrained(CLIP_FOLDER, TEXT_FOLDER, projection_dim=CLIP_EMBED_DIM)


def test_it_has_transformers_parameters_and_the_guides_text_tower(assembled):
    assert parameter_count(assembled) == int(IO["parameters"])
    text = assembled.config.text_cfg
    assert (text.kind, text.encoder, text.pooler_type, text.proj_type, text.proj_bias) == (
        "paddlenlp", "roberta", "pooler_output", "linear", False)
    assert text.context_length == 22  # CLIP's 77 capped by the fixture's 24 positions, less RoBERTa's 2
    assert assembled.config.init_logit_scale == 2.6592  # transformers' logit_scale_init_value
    assert not assembled.training


def test_the_clips_image_features_are_kept_with_its_projection(assembled):
    with paddle.no_grad():
        features = assembled.encode_image(paddle.to_tensor(IO["image"])).numpy()
    np.testing.assert_allclose(features, IO["image_features"], rtol=0, atol=TOLERANCE)


def test_the_clips_preprocessing_and_activation_come_along(assembled):
    assert assembled.config.preprocess_cfg.mean == assembled.config.preprocess_cfg.std == (0.5, 0.5, 0.5)
    assert assembled.config.quick_gelu


def test_the_text_encoder_gives_transformers_hidden_states(assembled):
    with paddle.no_grad():
        states, valid = assembled.text.token_states(paddle.to_tensor(IO["input_ids"]))
    real = IO["attention_mask"][..., None].astype(bool)  # padded positions are never read
    np.testing.assert_allclose(np.where(real, states.numpy(), 0), np.where(real, IO["last_hidden_state"], 0),
                               rtol=0, atol=TOLERANCE)


def test_new_weights_start_as_transformers_starts_them(assembled):
    bound = 1 / math.sqrt(TEXT_WIDTH)  # torch Linear: U(-1/sqrt(in), 1/sqrt(in))
    projection = assembled.text.proj.weight.numpy()
    assert projection.shape == (TEXT_WIDTH, CLIP_EMBED_DIM)
    assert 0.8 * bound < np.abs(projection).max() <= bound
    pooler = assembled.text.transformer.pooler.dense  # absent from a masked-LM checkpoint: N(0, 0.02), zero bias
    assert np.all(pooler.bias.numpy() == 0) and 0.01 < pooler.weight.numpy().std() < 0.03
    assert float(assembled.logit_scale) == pytest.approx(2.6592)


def test_a_paddlemix_clip_gives_the_same_image_tower(assembled, tmp_path):
    converted = convert("hf", None, CLIP_FOLDER, tmp_path / "clip")
    model = DualEncoder.from_vision_text_pretrained(converted, TEXT_FOLDER, projection_dim=CLIP_EMBED_DIM)
    for key, value in assembled.visual.state_dict().items():
        np.testing.assert_array_equal(model.visual.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_another_projection_dim_starts_the_visual_projection_afresh():
    paddle.seed(0)
    model = DualEncoder.from_vision_text_pretrained(CLIP_FOLDER, TEXT_FOLDER, projection_dim=8)
    with paddle.no_grad():
        features = model(image=paddle.to_tensor(IO["image"]), input_ids=paddle.to_tensor(IO["input_ids"]))
    assert features["image_features"].shape == features["text_features"].shape == [3, 8]
    assert np.abs(model.visual.proj.numpy()).max() <= 1 / math.sqrt(32)  # the ViT's width


def test_saved_folder_loads_with_auto_model_and_finds_its_tokenizer(assembled, tmp_path):
    assembled.save_pretrained(tmp_path / "clip-roberta")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "clip-roberta" / name).read_bytes() == (TEXT_FOLDER / name).read_bytes()
    loaded = AutoModel.from_pretrained(tmp_path / "clip-roberta")
    for key, value in assembled.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    captions = ["a cat", "two red squares"]
    np.testing.assert_array_equal(get_tokenizer(tmp_path / "clip-roberta")(captions), get_tokenizer(assembled)(captions))
    with paddle.no_grad():
        ids = paddle.to_tensor(get_tokenizer(loaded)(captions))
        np.testing.assert_allclose(loaded.encode_text(ids).numpy(), assembled.encode_text(ids).numpy(), rtol=0, atol=0)


def test_context_length_can_be_chosen_within_the_encoders_positions():
    model = DualEncoder.from_vision_text_pretrained(CLIP_FOLDER, TEXT_FOLDER, projection_dim=CLIP_EMBED_DIM,
                                                    context_length=16)
    assert model.context_length == get_tokenizer(model).context_length == 16
    with pytest.raises(ValueError, match="context_length=23: .* 1..22"):
        DualEncoder.from_vision_text_pretrained(CLIP_FOLDER, TEXT_FOLDER, context_length=23)


def test_a_folder_without_config_is_refused_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"text {tmp_path}: no config.json"):
        DualEncoder.from_vision_text_pretrained(CLIP_FOLDER, tmp_path)


def test_a_coca_image_tower_is_refused(tmp_path):
    tower = dict(width=32, layers=1, heads=2, vocab_size=64, context_length=8)
    config = CoCaConfig.from_dict(dict(
        embed_dim=32, text_cfg=dict(tower, embed_cls=True), multimodal_cfg=tower,
        vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16, attentional_pool=True,
                        attn_pooler_queries=3, attn_pooler_heads=2)))
    AutoModel.from_config(config).save_pretrained(tmp_path / "coca")
    with pytest.raises(ValueError, match="a coca model; the image tower is taken from a CLIP or EVA-CLIP"):
        DualEncoder.from_vision_text_pretrained(tmp_path / "coca", TEXT_FOLDER)
