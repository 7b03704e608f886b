"""`python -m paddlemix.cli`: zero-shot labels and the similarity map equal a direct computation with the model."""

import json

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix import AutoModel, list_models
from paddlemix.cli import main
from paddlemix.evaluation.plots import CELL
from paddlemix.models import CLIPConfig, TextConfig, VisionConfig
from paddlemix.processors import CLIPProcessor
from paddlemix.processors import get_tokenizer

LABELS = ["cat", "dog", "red car", "tree"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]
COLOURS = {"a_red.png": (220, 40, 40), "b_green.png": (40, 180, 60), "c_blue.jpg": (40, 80, 220)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random CLIP saved with save_pretrained."""
    paddle.seed(0)
    vision = VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=2)
    text = TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    directory = tmp_path_factory.mktemp("model")
    AutoModel.from_config(CLIPConfig(embed_dim=16, vision_cfg=vision, text_cfg=text)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModel.from_pretrained(model_dir)


@pytest.fixture()
def image_dir(tmp_path):
    """Three coloured images (one with a gradient), an unreadable .jpg and a text file that is not an image."""
    directory = tmp_path / "images"
    directory.mkdir()
    for index, (name, colour) in enumerate(COLOURS.items()):
        pixels = np.zeros((40, 48, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
        pixels[:, :, index] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
        Image.fromarray(pixels).save(directory / name)
    (directory / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (directory / "notes.txt").write_text("ignored: not an image suffix")
    return directory


def readable_paths(image_dir):
    return sorted(image_dir / name for name in COLOURS)


def direct_logits(model, paths, labels, templates):
    """scale * cos(image, label) with a label's embedding the normalised mean over its templates."""
    processor = CLIPProcessor.from_config(model.config)
    with paddle.no_grad():
        images = [Image.open(path) for path in paths]
        image_features = model.encode_image(processor(images=images)["image"], normalize=True).numpy()
        columns = []
        for label in labels:
            input_ids = processor(text=[t.format(label) for t in templates])["input_ids"]
            mean = model.encode_text(input_ids, normalize=True).numpy().mean(axis=0)
            columns.append(mean / np.linalg.norm(mean))
        return float(model.scale().numpy()[0]) * image_features @ np.stack(columns, axis=1)


def direct_probabilities(model, paths, labels, templates):
    """The softmax over the labels of direct_logits."""
    logits = direct_logits(model, paths, labels, templates)
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def parse_zeroshot(stdout):
    """{path: [(label, probability), ...]} from the result lines, and the summary line."""
    *lines, summary = stdout.strip().splitlines()
    results = {}
    for line in lines:
        path, entries = line.split(": ", 1)
        results[path] = [(entry.rsplit(" ", 1)[0], float(entry.rsplit(" ", 1)[1])) for entry in entries.split(", ")]
    return results, summary


def run_zeroshot(model_dir, image_dir, top_k, capsys):
    argv = ["zeroshot", "--model", str(model_dir), "--images", str(image_dir), "--labels", " , ".join(LABELS),
            "--templates", *TEMPLATES, "--top-k", str(top_k), "--batch-size", "2"]
    assert main(argv) == 0
    return parse_zeroshot(capsys.readouterr().out)


def test_zeroshot_prints_top_k_labels_per_readable_image_as_the_model_computes(model_dir, model, image_dir, capsys,
                                                                                caplog):
    with caplog.at_level("WARNING", logger="paddlemix"):
        results, summary = run_zeroshot(model_dir, image_dir, 2, capsys)
    paths = readable_paths(image_dir)
    assert list(results) == [str(path) for path in paths]  # sorted; broken.jpg and notes.txt have no line
    expected = direct_probabilities(model, paths, LABELS, TEMPLATES)
    for path, row in zip(paths, expected):
        entries = results[str(path)]
        probabilities = [p for _, p in entries]
        assert len(entries) == 2
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 0.0005 * len(entries)  # printed with 3 decimals
        assert entries[0][0] == LABELS[int(np.argmax(row))]
        for label, probability in entries:
            assert probability == pytest.approx(row[LABELS.index(label)], abs=6e-4)
    assert summary == "3 images classified, 1 unreadable skipped"
    assert "broken.jpg" in caplog.text and "notes.txt" not in caplog.text


def test_zeroshot_caps_top_k_at_the_number_of_labels(model_dir, image_dir, capsys):
    results, _ = run_zeroshot(model_dir, image_dir, 10, capsys)
    for entries in results.values():
        assert sorted(label for label, _ in entries) == sorted(LABELS)
        assert sum(p for _, p in entries) == pytest.approx(1.0, abs=0.0005 * len(LABELS))


def test_zeroshot_of_a_sigmoid_loss_model_prints_each_labels_own_sigmoid(tmp_path, image_dir, capsys):
    """A model trained with the sigmoid loss (SigLIP): sigmoid(scale * cos + bias) per label, not a softmax."""
    paddle.seed(1)
    vision = VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=1)
    text = TextConfig(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    config = CLIPConfig(embed_dim=16, vision_cfg=vision, text_cfg=text, loss="siglip", init_logit_scale=np.log(10.0),
                        init_logit_bias=-1.0)
    AutoModel.from_config(config).save_pretrained(tmp_path / "siglip")
    model = AutoModel.from_pretrained(tmp_path / "siglip")
    results, _ = run_zeroshot(tmp_path / "siglip", image_dir, len(LABELS), capsys)
    logits = direct_logits(model, readable_paths(image_dir), LABELS, TEMPLATES) + float(model.logit_bias)
    expected = 1 / (1 + np.exp(-logits))
    for path, row in zip(readable_paths(image_dir), expected):
        for label, probability in results[str(path)]:
            assert probability == pytest.approx(row[LABELS.index(label)], abs=6e-4)
    assert any(abs(sum(dict(entries).values()) - 1) > 0.01 for entries in results.values())  # not a softmax


@pytest.mark.parametrize("labels", ["cat,,dog", " , ", ""])
def test_zeroshot_rejects_empty_labels_naming_the_flag(model_dir, image_dir, labels, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zeroshot", "--model", str(model_dir), "--images", str(image_dir), "--labels", labels])
    assert exit_info.value.code == 2
    assert "--labels" in capsys.readouterr().err


def test_zeroshot_fails_when_no_image_can_be_read(model_dir, image_dir, capsys, caplog):
    argv = ["zeroshot", "--model", str(model_dir), "--images", str(image_dir / "broken.jpg"), "--labels", "cat,dog"]
    with caplog.at_level("ERROR", logger="paddlemix"):
        assert main(argv) == 1
    assert capsys.readouterr().out.strip() == "0 images classified, 1 unreadable skipped"
    assert "could be read" in caplog.text


def test_similarity_prints_the_matrix_and_writes_a_heat_map_of_its_shape(model_dir, model, image_dir, tmp_path,
                                                                         capsys):
    texts = ["a red one", "green", "blue", "a tree"]  # short: the caption column stays narrower than a cell
    output = tmp_path / "similarity.png"
    paths = readable_paths(image_dir)
    # a file and a directory: the file is also found in the directory, so it is a column twice
    argv = ["similarity", "--model", str(model_dir), "--images", str(paths[0]), str(image_dir),
            "--texts", *texts, "--output", str(output), "--batch-size", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    columns = [paths[0], *paths]
    assert lines[1:1 + len(columns)] == [f"image {i}: {path}" for i, path in enumerate(columns)]
    rows = lines[2 + len(columns):2 + len(columns) + len(texts)]
    printed = np.array([[float(v) for v in row[-11 * len(columns):].split()] for row in rows])
    assert [row[:-11 * len(columns)].strip() for row in rows] == texts

    processor = CLIPProcessor.from_config(model.config)
    with paddle.no_grad():
        image_features = model.encode_image(processor(images=[Image.open(p) for p in columns])["image"], normalize=True)
        text_features = model.encode_text(processor(text=texts)["input_ids"], normalize=True)
    np.testing.assert_allclose(printed, (text_features @ image_features.T).numpy(), atol=1e-5)

    assert lines[-2] == f"heat map: {output.resolve()}"
    assert lines[-1] == "4 images compared, 1 unreadable skipped"
    with Image.open(output) as heat_map:
        width, height = heat_map.size
    assert height == CELL * (len(texts) + 1)  # a thumbnail row, then one row per text
    assert 0 < width - CELL * len(columns) < CELL  # the caption column, then one cell per image


def test_zeroshot_runs_on_an_exported_model_like_the_eager_one(model_dir, image_dir, tmp_path, capsys):
    from paddlemix import AutoModel
    from paddlemix.tools.export import export

    export(AutoModel.from_pretrained(str(model_dir)), tmp_path / "export")
    args = ["zeroshot", "--images", str(image_dir), "--labels", "cat,dog,bird", "--top-k", "1"]
    assert main([*args, "--model", str(model_dir)]) == 0
    eager, _ = parse_zeroshot(capsys.readouterr().out)
    assert main([*args, "--model", str(tmp_path / "export"), "--backend", "inference"]) == 0
    inference, _ = parse_zeroshot(capsys.readouterr().out)
    assert [[label for label, _ in entries] for entries in inference.values()] == \
        [[label for label, _ in entries] for entries in eager.values()]


@pytest.fixture(scope="module")
def coca_dir(tmp_path_factory):
    """A tiny random CoCa with the real vocabulary, saved with save_pretrained."""
    from paddlemix.models.configuration import CoCaConfig, MultimodalConfig

    paddle.seed(0)
    vision = VisionConfig(image_size=32, patch_size=8, width=32, head_width=16, layers=1, attentional_pool=True,
                          attn_pooler_heads=2, attn_pooler_queries=4)
    text = TextConfig(context_length=20, vocab_size=49408, width=16, heads=2, layers=1, embed_cls=True)
    decoder = MultimodalConfig(context_length=20, vocab_size=49408, width=16, heads=2, layers=1)
    directory = tmp_path_factory.mktemp("coca")
    AutoModel.from_config(CoCaConfig(embed_dim=16, vision_cfg=vision, text_cfg=text, multimodal_cfg=decoder)) \
        .save_pretrained(directory)
    return directory


def test_caption_writes_one_json_line_per_readable_image_as_generate_decodes(coca_dir, image_dir, tmp_path, capsys):
    from paddlemix.models.coca import decode_captions

    output = tmp_path / "out" / "captions.jsonl"
    exit_code = main(["caption", "--model", str(coca_dir), "--images", str(image_dir), "--output", str(output),
                      "--seq-len", "8", "--min-seq-len", "2", "--num-beams", "4", "--num-beam-groups", "2"])
    assert exit_code == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    paths = readable_paths(image_dir)
    assert [record["image"] for record in records] == [str(path) for path in paths]
    model = AutoModel.from_pretrained(coca_dir)
    images = CLIPProcessor.from_config(model.config)(images=[Image.open(path) for path in paths])["image"]
    expected = decode_captions(model.generate(images, seq_len=8, min_seq_len=2, num_beams=4, num_beam_groups=2),
                               get_tokenizer(model))
    assert [record["caption"] for record in records] == expected
    assert "3 images captioned, 1 unreadable skipped" in capsys.readouterr().out
    assert not output.with_name("captions.jsonl.partial").exists()


def test_caption_refuses_a_model_that_cannot_write_captions(model_dir, image_dir, tmp_path, caplog):
    exit_code = main(["caption", "--model", str(model_dir), "--images", str(image_dir),
                      "--output", str(tmp_path / "c.jsonl")])
    assert exit_code == 1
    assert "cannot write captions" in caplog.text


def test_models_lists_every_registry_name_with_parameters_resolution_and_cache_state(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PPMIX_HOME", str(tmp_path))
    cached = tmp_path / "models" / "paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378" / "model_state.pdparams"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert main(["models"]) == 0
    header, *lines, summary = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["name", "parameters", "resolution", "weights"]
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in lines}
    assert sorted(rows) == list_models()
    assert rows["paddlemix/CLIP/DFN5B-CLIP-ViT-H-14-378"] == ["986,714,881", "378", "cached"]
    assert rows["paddlemix/CLIP/DFN5B-CLIP-ViT-H-14"] == ["986,109,441", "224", "not cached"]
    assert rows["paddlemix/EVA/EVA02-CLIP-L-14-336"] == ["428,083,137", "336", "not cached"]
    assert rows["paddlemix/CLIP/ViT-B-32"] == ["151,277,313", "224", "none published"]
    assert summary.startswith(f"{len(list_models())} models") and str(tmp_path / "models") in summary
