"""The PaddleNLP text tower (text_cfg kind 'paddlenlp'): RoBERTa, XLM-RoBERTa and BERT encoders give
transformers' hidden states and pooler output with transformers' weights, pool and project as
open_clip's HFTextEncoder, ignore how far a batch is padded, and answer the trainer's questions
(decay, depth, lock) as open_clip would (fixtures: tests/fixtures/make_text_tower_fixtures.py)."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from paddlemix.models.checkpoint_formats.common import torch_to_paddle_layout
from paddlemix.models.checkpoint_formats.paddlenlp_names import hf_text_to_paddlenlp, paddlenlp_to_hf_text
from paddlemix.models.clip.paddlenlp_tower import PaddleNLPTextConfig, PaddleNLPTextTower

FIXTURES = Path(__file__).parent / "fixtures" / "text_towers"
FAMILIES = ["roberta", "xlm-roberta", "bert"]
TOLERANCE = 1e-4  # max abs difference, float32
WIDTH = 32  # the fixtures' hidden_size


def encoder_config(family: str) -> dict:
    return json.loads((FIXTURES / family / "config.json").read_text())


def tower(family: str, output_dim: int = WIDTH, **options) -> PaddleNLPTextTower:
    settings = dict(pooler_type="pooler_output", proj_type="none", context_length=20)
    settings.update(options)
    cfg = PaddleNLPTextConfig(encoder=family, encoder_config=encoder_config(family), **settings)
    return PaddleNLPTextTower(cfg, output_dim).eval()


def with_hf_weights(model: PaddleNLPTextTower, family: str) -> PaddleNLPTextTower:
    """Load the fixture's transformers weights into the tower's encoder, through the converters' mapping
    (the fixture's pooler is left out where the tower has none)."""
    hf = hf_text_to_paddlenlp(load_file(str(FIXTURES / family / "model.safetensors")), family)
    state = torch_to_paddle_layout({f"text.transformer.{key}": value for key, value in hf.items()})
    expected = model.transformer.state_dict()
    assert set(state) - {f"text.transformer.{key}" for key in expected} <= {
        "text.transformer.pooler.dense.weight", "text.transformer.pooler.dense.bias"}
    for key, param in expected.items():
        param.set_value(paddle.to_tensor(state[f"text.transformer.{key}"]))
    return model


def reference(family: str):
    return np.load(FIXTURES / f"{family}.io.npz")


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_gives_transformers_hidden_states_and_pooler_output(family):
    model, io = with_hf_weights(tower(family), family), reference(family)
    with paddle.no_grad():
        states, valid = model.token_states(paddle.to_tensor(io["input_ids"]))
        pooled = model(paddle.to_tensor(io["input_ids"]))
    np.testing.assert_array_equal(valid.numpy(), io["attention_mask"].astype(bool))
    real = io["attention_mask"][..., None].astype(bool)  # padded positions are never read
    np.testing.assert_allclose(np.where(real, states.numpy(), 0), np.where(real, io["last_hidden_state"], 0),
                               rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(pooled.numpy(), io["pooler_output"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("pooler_type, expected", [
    ("cls", lambda h, m: h[:, 0]),
    ("mean", lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdims=True)),  # open_clip's MeanPooler
    ("eos", lambda h, m: h[np.arange(len(h)), m.sum(1) - 1]),
])
def test_poolers_read_transformers_hidden_states_as_open_clip_does(pooler_type, expected):
    model, io = with_hf_weights(tower("roberta", pooler_type=pooler_type), "roberta"), reference("roberta")
    with paddle.no_grad():
        pooled = model(paddle.to_tensor(io["input_ids"])).numpy()
    np.testing.assert_allclose(pooled, expected(io["last_hidden_state"], io["attention_mask"]), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooler_type", ["cls", "mean", "pooler_output", "eos"])
def test_features_do_not_depend_on_padding_length(family, pooler_type):
    paddle.seed(0)
    model = tower(family, output_dim=16, pooler_type=pooler_type, proj_type="mlp")
    ids = reference(family)["input_ids"]
    pad = encoder_config(family)["pad_token_id"]
    longer = np.concatenate([ids, np.full((len(ids), 4), pad, dtype=ids.dtype)], axis=1)
    shorter = ids[:1, :5]  # the first caption, unpadded
    with paddle.no_grad():
        features = model(paddle.to_tensor(ids)).numpy()
        np.testing.assert_allclose(model(paddle.to_tensor(longer)).numpy(), features, rtol=0, atol=1e-5)
        np.testing.assert_allclose(model(paddle.to_tensor(shorter)).numpy(), features[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("proj_type, proj_bias, names", [
    ("linear", False, ["proj.weight"]),
    ("linear", True, ["proj.weight", "proj.bias"]),
    ("mlp", False, ["proj.0.weight", "proj.2.weight"]),
    ("mlp", True, ["proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"]),
])
def test_projection_parameters_have_open_clip_names(proj_type, proj_bias, names):
    model = tower("roberta", output_dim=16, proj_type=proj_type, proj_bias=proj_bias, pooler_type="mean")
    assert [name for name, _ in model.named_parameters() if name.startswith("proj.")] == names
    if proj_type == "mlp":  # open_clip: Linear(d, (d + out) // 2), GELU, Linear(.., out)
        assert model.proj[0].weight.shape == [WIDTH, (WIDTH + 16) // 2]


@pytest.mark.parametrize("pooler_type, has_pooler", [("mean", False), ("cls", False), ("eos", False),
                                                     ("pooler_output", True)])
def test_encoder_pooler_exists_only_when_its_output_is_the_embedding(pooler_type, has_pooler):
    for family in FAMILIES:
        names = [name for name, _ in tower(family, pooler_type=pooler_type).named_parameters()]
        assert any(".pooler." in name for name in names) == has_pooler


def test_no_weight_decay_names_biases_norms_and_position_embeddings():
    model = tower("roberta", output_dim=16, proj_type="mlp", proj_bias=True)
    exempt = model.no_weight_decay()
    decays = {name for name, _ in model.named_parameters()} - exempt
    assert {"transformer.embeddings.position_embeddings.weight", "transformer.embeddings.token_type_embeddings.weight",
            "transformer.embeddings.layer_norm.weight", "transformer.encoder.layers.1.norm2.bias",
            "transformer.encoder.layers.0.self_attn.q_proj.bias", "transformer.pooler.dense.bias",
            "proj.0.bias"} <= exempt
    assert decays == {"transformer.embeddings.word_embeddings.weight", "transformer.pooler.dense.weight",
                      "proj.0.weight", "proj.2.weight"} | {
        f"transformer.encoder.layers.{i}.{name}.weight" for i in range(2)
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "linear1",
                     "linear2")}


@pytest.mark.parametrize("family, layer", [("roberta", "layers"), ("xlm-roberta", "layer")])
def test_layer_id_counts_embeddings_layers_and_head(family, layer):
    model = tower(family, output_dim=16, proj_type="linear")
    assert model.num_layers == 2
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert {ids[name] for name in ids if name.startswith("transformer.embeddings.")} == {0}
    assert {ids[name] for name in ids if name.startswith(f"transformer.encoder.{layer}.0.")} == {1}
    assert {ids[name] for name in ids if name.startswith(f"transformer.encoder.{layer}.1.")} == {2}
    assert ids["transformer.pooler.dense.weight"] == ids["proj.weight"] == 3


@pytest.mark.parametrize("case", json.loads((FIXTURES / "lock_cases.json").read_text()),
                         ids=lambda case: f"unlocked{case['unlocked_layers']}-freeze_ln{case['freeze_layer_norm']}")
def test_lock_leaves_trainable_what_open_clip_leaves_trainable(case):
    model = tower("roberta", output_dim=16, proj_type="linear")
    model.lock(case["unlocked_layers"], case["freeze_layer_norm"])
    trainable = {name for name, param in model.named_parameters() if not param.stop_gradient}
    encoder = hf_text_to_paddlenlp({name[len("transformer."):]: None for name in case["trainable"]
                                    if name.startswith("transformer.")}, "roberta")
    assert trainable == {f"transformer.{name}" for name in encoder} | {"proj.weight"}


def test_names_map_back_to_transformers():
    hf = load_file(str(FIXTURES / "bert" / "model.safetensors"))
    assert set(paddlenlp_to_hf_text(hf_text_to_paddlenlp(hf, "bert"), "bert")) == set(hf)


def test_recompute_gives_the_same_gradients():
    config = dict(encoder_config("bert"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = PaddleNLPTextConfig(encoder="bert", encoder_config=config, pooler_type="mean", proj_type="mlp",
                              context_length=16)
    paddle.seed(0)
    model = PaddleNLPTextTower(cfg, 16)
    ids = paddle.to_tensor(reference("bert")["input_ids"])
    gradients = []
    for enable in (False, True):
        model.set_recompute(enable)
        model.clear_gradients()
        model(ids).square().sum().backward()
        gradients.append({name: param.grad.numpy() for name, param in model.named_parameters()})
    for name, grad in gradients[0].items():
        np.testing.assert_allclose(gradients[1][name], grad, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("change, reason", [
    (dict(encoder="gpt2"), r"encoder 'gpt2' is not one of"),
    (dict(pooler_type="max"), r"pooler_type 'max'"),
    (dict(proj_type="attention"), r"proj_type 'attention'"),
    (dict(context_length=23), r"context_length 23 must be in 1\.\.22"),
    (dict(encoder_config=dict(encoder_config("roberta"), hidden_act="gelu_new")), r"hidden_act 'gelu_new'"),
    (dict(encoder_config=dict(encoder_config("roberta"), position_embedding_type="relative_key")),
     r"position_embedding_type 'relative_key'"),
    (dict(encoder="bert"), r"encoder_config\.model_type 'roberta' differs from encoder 'bert'"),
], ids=["encoder", "pooler", "projection", "context_length", "activation", "relative_positions",
        "model_type"])
def test_config_refuses_what_the_tower_cannot_build(change, reason):
    settings = dict(encoder="roberta", encoder_config=encoder_config("roberta"), context_length=16)
    with pytest.raises(ValueError, match=reason):
        PaddleNLPTextConfig(**dict(settings, **change))


@pytest.mark.parametrize("encoder, vocab_size, pad_token_id", [("roberta", 50265, 1), ("xlm-roberta", 30522, 1),
                                                             ("bert", 30522, 0)])
def test_keys_a_composite_config_json_leaves_out_take_transformers_defaults(encoder, vocab_size, pad_token_id):
    cfg = PaddleNLPTextConfig(encoder=encoder, encoder_config={"hidden_size": 32, "num_attention_heads": 2})
    assert (cfg.encoder_config["vocab_size"], cfg.encoder_config["pad_token_id"]) == (vocab_size, pad_token_id)
    assert (cfg.encoder_config["layer_norm_eps"], cfg.encoder_config["type_vocab_size"]) == (1e-12, 2)


def test_tower_refuses_tensor_parallelism_and_a_missing_projection():
    cfg = PaddleNLPTextConfig(encoder="roberta", encoder_config=encoder_config("roberta"), context_length=16,
                              proj_type="none")
    with pytest.raises(ValueError, match="tensor_parallel_degree 2"):
        PaddleNLPTextTower(cfg, WIDTH, tensor_parallel_degree=2)
    with pytest.raises(ValueError, match=r"proj_type 'none' needs encoder_config\.hidden_size \(32\) equal to embed_dim"):
        PaddleNLPTextTower(cfg, 16)


def test_longer_text_than_context_length_is_refused():
    with pytest.raises(ValueError, match="context_length 20"):
        tower("roberta")(paddle.ones([1, 21], dtype="int64"))
