"""Deployment export: Paddle Inference programs of both encoders give the eager model's features."""

import json

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix import inference
from paddlemix.inference import InferenceEncoders, cpu_supports_bf16, gpu_available
from paddlemix.models import CLIPConfig, TextConfig, VisionConfig
from paddlemix.models.layers import attention, linear
from paddlemix.models.layers.kernels import export_kernels, exporting
from paddlemix.tools.export import export, main

TINY_CLIP = CLIPConfig(
    embed_dim=16,
    vision_cfg=VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=2),
    text_cfg=TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)
# EVA02 vision options (rotary embeddings, SwiGLU, sub-LN, q/v bias) as in test_eva_model.tiny_eva02
TINY_EVA = CLIPConfig.from_dict({
    "model_type": "evaclip", "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2,
                   "mlp_ratio": 8 / 3, "rope": True, "pt_hw_seq_len": 4, "naiveswiglu": True, "subln": True,
                   "attn_bias": "qv", "no_ln_pre": True, "patch_bias": True, "proj_bias": True, "norm_eps": 1e-6},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
})
CONFIGS = {"clip": TINY_CLIP, "eva": TINY_EVA}
# bf16 keeps 8 mantissa bits: per-feature errors of a few percent, directions nearly unchanged.
# Measured on this AMX CPU: min cosine(bf16, fp32) 0.99956 (tiny EVA images), >= 0.9999 (tiny CLIP,
# texts, and ViT-B-32 images at batch 32); the threshold leaves a 10x margin on 1 - cosine.
BF16_MIN_COSINE = 0.995


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    """(eager model, export directory) of a tiny random-init model."""
    paddle.seed(0)
    model = AutoModel.from_config(CONFIGS[request.param])
    model.eval()
    directory = tmp_path_factory.mktemp(f"export_{request.param}")
    export(model, directory)
    return model, directory


def random_inputs(model, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, *model.visual.image_size)).astype("float32")
    vocab = model.config.text_cfg.vocab_size
    ids = np.zeros((batch, model.context_length), dtype="int64")
    for row, length in enumerate(rng.integers(3, model.context_length, batch)):
        ids[row, :length] = rng.integers(1, vocab - 2, length)
        ids[row, 0], ids[row, length - 1] = vocab - 2, vocab - 1  # start and end (the argmax) tokens
    return images, ids


def eager_features(model, images, ids):
    with paddle.no_grad():
        return (model.encode_image(paddle.to_tensor(images)).numpy(),
                model.encode_text(paddle.to_tensor(ids)).numpy())


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_export_writes_both_encoders_and_a_description(exported):
    model, directory = exported
    for name in ("image_encoder", "text_encoder"):
        assert (directory / f"{name}.json").is_file() and (directory / f"{name}.pdiparams").is_file()
    description = json.loads((directory / "export.json").read_text())
    assert description["encoders"]["image_encoder"]["input"]["shape"] == [None, 3, 32, 32]
    assert description["encoders"]["text_encoder"]["input"] == {
        "name": "input_ids", "dtype": "int64", "shape": [None, 77]}
    assert description["encoders"]["text_encoder"]["output"]["shape"] == [None, 16]
    assert description["precision"] == "fp32" and description["normalized"] is False
    assert CLIPConfig.from_dict(description["model_config"]) == model.config


@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_inference_features_equal_eager_unnormalised_features(exported, batch):
    model, directory = exported
    encoders = InferenceEncoders(directory, threads=2)
    images, ids = random_inputs(model, batch, seed=batch)
    eager_images, eager_texts = eager_features(model, images, ids)
    image_features, text_features = encoders.encode_image(images), encoders.encode_text(ids)
    assert image_features.shape == (batch, 16) and text_features.shape == (batch, 16)
    np.testing.assert_allclose(image_features, eager_images, rtol=0, atol=1e-4)
    np.testing.assert_allclose(text_features, eager_texts, rtol=0, atol=1e-4)
    assert not np.allclose(np.linalg.norm(image_features, axis=-1), 1.0)


@pytest.mark.skipif(gpu_available() or not cpu_supports_bf16(),
                    reason="CPU bf16 test: needs no GPU, a oneDNN build and a CPU with AVX512-BF16/AMX "
                           "(paddle.base.core.supports_bfloat16_fast_performance())")
def test_bf16_inference_features_point_the_same_way_as_fp32(exported):
    model, directory = exported
    images, ids = random_inputs(model, 4)
    fp32, bf16 = InferenceEncoders(directory, threads=2), InferenceEncoders(directory, "bf16", threads=2)
    image_fp32, image_bf16 = fp32.encode_image(images), bf16.encode_image(images)
    assert not np.array_equal(image_bf16, image_fp32)  # bf16 kernels did run
    assert cosine(image_bf16, image_fp32).min() > BF16_MIN_COSINE
    assert cosine(bf16.encode_text(ids), fp32.encode_text(ids)).min() > BF16_MIN_COSINE


def test_export_kernels_compute_the_eager_results_and_end_with_the_export(tmp_path):
    rng = np.random.default_rng(0)
    query, key, value = (paddle.to_tensor(rng.standard_normal((2, 7, 3, 8)).astype("float32")) for _ in range(3))
    mask = paddle.triu(paddle.full([7, 7], float("-inf")), diagonal=1)
    x, weight, bias = (paddle.to_tensor(rng.standard_normal(shape).astype("float32")) for shape in
                       ((2, 5, 8), (8, 6), (6,)))
    eager = attention.scaled_dot_product_attention(query, key, value, mask), linear.linear(x, weight, bias)
    with export_kernels():
        assert exporting()
        traced = attention.scaled_dot_product_attention(query, key, value, mask), linear.linear(x, weight, bias)
    for a, b in zip(eager, traced):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    export(AutoModel.from_config(TINY_CLIP), tmp_path)
    assert not exporting()


def test_missing_export_directory_names_the_export_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="paddlemix.tools.export"):
        InferenceEncoders(tmp_path / "nowhere")


def test_unknown_precision_is_refused(exported):
    with pytest.raises(ValueError, match="fp16"):
        InferenceEncoders(exported[1], precision="fp16")


def test_bf16_on_a_cpu_without_bf16_is_refused(exported, monkeypatch):
    monkeypatch.setattr(inference, "gpu_available", lambda: False)
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    with pytest.raises(RuntimeError, match="precision 'bf16' is not supported"):
        InferenceEncoders(exported[1], precision="bf16")


def test_command_line_exports_a_model_directory(tmp_path):
    paddle.seed(0)
    model = AutoModel.from_config(TINY_CLIP)
    model.save_pretrained(tmp_path / "model")
    main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "out"), "--precision", "bf16"])
    assert json.loads((tmp_path / "out" / "export.json").read_text())["precision"] == "bf16"
    images, ids = random_inputs(model, 2)
    eager_images, _ = eager_features(model, images, ids)
    np.testing.assert_allclose(InferenceEncoders(tmp_path / "out").encode_image(images), eager_images, atol=1e-4)
