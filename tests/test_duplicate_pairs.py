"""Pairs that share an image or a caption are not negatives of each other: ClipLoss with the batch's
pair keys against the float64 definition (tests/duplicate_pairs_reference.py), the keys the collator
gives, and the trainer handing them to the loss (one batch and gradient accumulation)."""

import contextlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from duplicate_pairs_reference import CAPTION_OF_ROW, IMAGE_OF_ROW, kept_columns, masked_clip_loss
from paddlemix.data.csv_dataset import CsvDataset
from paddlemix.data.loader import ImageTextLoader
from paddlemix.data.pair_keys import caption_key, image_key, stable_key
from paddlemix.data.webdataset_shards import TarShardDataset
from paddlemix.models.loss import ClipLoss
from paddlemix.processors import SimpleTokenizer, image_transform
from paddlemix.trainer.trainer import CLIPTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]


def unit_rows(rng, n, d):
    rows = rng.standard_normal((n, d))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def tensor(x, grad=False):
    return paddle.to_tensor(np.asarray(x, dtype=np.float64), stop_gradient=not grad)


def clip_loss_and_grads(loss_fn, image, text, scale, **keys):
    inputs = [tensor(image, True), tensor(text, True), tensor(scale, True)]
    keys = {name: paddle.to_tensor(np.asarray(value), dtype="int64") for name, value in keys.items()}
    loss = loss_fn(*inputs, **keys)
    loss.backward()
    return [float(loss)] + [x.grad.numpy() for x in inputs]


@pytest.mark.parametrize("rows", [20, 16, 13])  # 16: a multiple of 8, where Paddle's CPU cross_entropy has a trap
def test_masked_loss_and_gradients_equal_the_definition(rows):
    rng = np.random.default_rng(rows)
    image_of_row, caption_of_row = IMAGE_OF_ROW[:rows], CAPTION_OF_ROW[:rows]
    images, texts = unit_rows(rng, 4, 8), unit_rows(rng, 18, 8)
    image = images[image_of_row] + 0.01 * rng.standard_normal((rows, 8))  # the same image, augmented apart
    text = texts[caption_of_row]
    scale = 14.3
    assert sum(rows - len(kept_columns(i, image_of_row, caption_of_row)) for i in range(rows)) > 2 * rows

    got = clip_loss_and_grads(ClipLoss(), image, text, scale, image_keys=image_of_row, caption_keys=caption_of_row)

    expected = masked_clip_loss(image, text, scale, image_of_row, caption_of_row)
    for name, value, reference in zip(("loss", "image", "text", "scale"), got, expected):
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-14, err_msg=name)
    unmasked = clip_loss_and_grads(ClipLoss(), image, text, scale)[0]
    assert unmasked > got[0] + 0.1  # an image was its own negative: the masked loss is clearly lower


def test_either_key_alone_masks_by_that_key_only():
    rng = np.random.default_rng(3)
    image, text = unit_rows(rng, 20, 8), unit_rows(rng, 20, 8)
    unique = np.arange(20)
    for keys, image_keys, caption_keys in (({"image_keys": IMAGE_OF_ROW}, IMAGE_OF_ROW, unique),
                                           ({"caption_keys": CAPTION_OF_ROW}, unique, CAPTION_OF_ROW)):
        got = clip_loss_and_grads(ClipLoss(), image, text, 9.0, **keys)
        expected = masked_clip_loss(image, text, 9.0, image_keys, caption_keys)
        for value, reference in zip(got, expected):
            np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_without_duplicates_the_masked_loss_equals_the_plain_loss_exactly(dtype):
    rng = np.random.default_rng(5)
    image, text = unit_rows(rng, 16, 8).astype(dtype), unit_rows(rng, 16, 8).astype(dtype)
    plain, masked = [], []
    for out, keys in ((plain, {}), (masked, {"image_keys": np.arange(16) * 7, "caption_keys": np.arange(16) + 100})):
        inputs = [paddle.to_tensor(x, stop_gradient=False) for x in (image, text, np.array(12.5, dtype))]
        loss = ClipLoss()(*inputs, **{k: paddle.to_tensor(v, dtype="int64") for k, v in keys.items()})
        loss.backward()
        out.extend([loss.numpy()] + [x.grad.numpy() for x in inputs])
    for a, b in zip(plain, masked):
        np.testing.assert_array_equal(a, b)


def test_keys_are_stable_64_bit_digests_whatever_the_process_hash_seed():
    code = ("from paddlemix.data.pair_keys import caption_key, image_key; "
            "print(caption_key('a dog on a sofa'), image_key(b'\\x89PNG bytes'))")
    expected = [str(caption_key("a dog on a sofa")), str(image_key(b"\x89PNG bytes"))]
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.split() == expected, f"PYTHONHASHSEED={seed}"
    assert stable_key(b"") != stable_key(b"\0") and -2**63 <= stable_key(b"x") < 2**63


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_the_collator_gives_equal_keys_to_a_shared_image_or_caption(tmp_path):
    for name, seed in (("a.png", 0), ("b.png", 1), ("copy_of_a.png", 0)):
        write_image(tmp_path / name, seed)
    rows = [("a.png", "a dog"), ("b.png", "a dog"), ("a.png", "a brown dog"), ("copy_of_a.png", "a sofa"),
            ("b.png", "  a sofa ")]
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n" + "".join(f"{i}\t{c}\n" for i, c in rows))
    dataset = CsvDataset(tmp_path / "pairs.tsv", image_transform(16, is_train=False))

    batch = next(iter(ImageTextLoader(dataset, batch_size=5, tokenizer=SimpleTokenizer(context_length=8),
                                      shuffle=False)))

    image_keys, caption_keys = batch["image_keys"].numpy(), batch["caption_keys"].numpy()
    assert batch["image_keys"].dtype == paddle.int64 and batch["caption_keys"].dtype == paddle.int64
    # a byte-identical copy under another name is the same image; captions compare as stripped
    assert image_keys[0] == image_keys[2] == image_keys[3] != image_keys[1] == image_keys[4]
    assert caption_keys[0] == caption_keys[1] and caption_keys[3] == caption_keys[4]
    assert len(set(caption_keys.tolist())) == 3
    assert image_keys[1] == image_key((tmp_path / "b.png").read_bytes()) and caption_keys[2] == caption_key("a brown dog")


def test_a_stream_keys_its_images_by_their_bytes(tmp_path):
    def png(seed):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    members = [("s0.png", png(0)), ("s0.txt", b"first"), ("s1.png", png(1)), ("s1.txt", b"second"),
               ("s2.png", png(0)), ("s2.txt", b"first again, same image")]
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dataset = TarShardDataset(str(tmp_path / "shard-0.tar"), image_transform(8, is_train=False), shuffle_buffer=0)
    loader = ImageTextLoader(dataset, batch_size=3, tokenizer=SimpleTokenizer(context_length=8))

    batch = next(iter(loader))

    assert batch["image_keys"].numpy().tolist() == [image_key(png(0)), image_key(png(1)), image_key(png(0))]


# ---------------------------------------------------------------- the trainer passes the keys to the loss


class TrainerParts:
    """CLIPTrainer's loss methods on their own: no PaddleNLP trainer state, the model called directly."""

    compute_loss = CLIPTrainer.compute_loss
    _accumulated_backward = CLIPTrainer._accumulated_backward
    _joined = staticmethod(CLIPTrainer._joined)
    autocast_smart_context_manager = staticmethod(contextlib.nullcontext)

    def __init__(self):
        self.loss_fn = ClipLoss()

    def _skip_nonfinite(self, what, values):
        return False

    def _backward(self, loss):
        loss.backward()


def tiny_clip_batch():
    """A tiny float64 CLIP and a COCO-like batch of 20 rows: images repeated, captions shared."""
    sys.path.insert(0, str(Path(__file__).parent / "distributed"))
    from duplicate_pairs_worker import build_model, global_batch

    return build_model(), global_batch()


def parameter_grads(model):
    grads = {name: param.grad.numpy().copy() for name, param in model.named_parameters()}
    model.clear_gradients()
    return grads


def test_trainer_masks_one_batch_and_accumulated_micro_batches_alike():
    model, batch = tiny_clip_batch()
    trainer = TrainerParts()
    keyless = {key: batch[key] for key in ("image", "input_ids")}

    loss = trainer.compute_loss(model, batch)
    loss.backward()
    whole = parameter_grads(model)
    halves = [{key: value[rows] for key, value in batch.items()} for rows in (slice(0, 12), slice(12, 20))]
    accumulated_loss = trainer._accumulated_backward(model, halves)
    accumulated = parameter_grads(model)
    trainer.compute_loss(model, keyless).backward()
    unmasked = parameter_grads(model)

    np.testing.assert_allclose(float(accumulated_loss), float(loss), rtol=1e-12)
    for name, grad in whole.items():
        np.testing.assert_allclose(accumulated[name], grad, rtol=1e-9, atol=1e-13, err_msg=name)
    assert not np.allclose(unmasked["logit_scale"], whole["logit_scale"])  # the keys did reach the loss
