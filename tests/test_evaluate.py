"""run_zero_shot_eval: zero-shot classification and retrieval on files, with a classifier cache keyed by
the weights, bad-input errors, and 2-process evaluation equal to one process."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddlemix import AutoConfig, AutoModel
from paddlemix.data.synthetic import COLOURS
from paddlemix.evaluation import retrieval_metrics
from paddlemix.tools.zero_shot_eval import run_zero_shot_eval
from paddlemix.processors import SimpleTokenizer, image_transform

from trainer_helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "paddlemix" / "examples" / "clip" / "run_zero_shot_eval.py"


@pytest.fixture(scope="module")
def evaluation_setup(setup, tmp_path_factory):
    """A saved tiny model, a 4-class ImageFolder (shapes test images by colour) with one unreadable image."""
    root = tmp_path_factory.mktemp("evaluation")
    paddle.seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(str(setup / "tiny.json"))).save_pretrained(root / "model")
    folder = root / "colours"
    records = json.loads((setup / "shapes" / "annotations" / "coco_karpathy_test.json").read_text())
    for record in records:
        colour = next(c for c in COLOURS if c in record["caption"][0].split())
        (folder / "images" / colour).mkdir(parents=True, exist_ok=True)
        shutil.copy(setup / "shapes" / "images" / record["image"], folder / "images" / colour)
    (folder / "images" / "red" / "zz_broken.jpg").write_bytes(b"not a jpeg")
    (folder / "labels.txt").write_text("".join(f"{c} shape\n" for c in sorted(COLOURS)))
    (folder / "templates.txt").write_text("# prompts\na {}\na picture of a {}\n")
    return root


def evaluate(evaluation_setup, setup, output, *extra):
    return run_zero_shot_eval(["--model", str(evaluation_setup / "model"), "--classification_eval",
                               str(evaluation_setup / "colours"), "--retrieval_eval",
                               str(setup / "shapes" / "annotations" / "coco_karpathy_test.json"),
                               "--per_device_eval_batch_size", "16", "--output_dir", str(output), *extra])


def test_classification_and_retrieval_equal_a_direct_computation(evaluation_setup, setup, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        results = evaluate(evaluation_setup, setup, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert "zero-shot classification task: colours: top1:" in caplog.text

    model = AutoModel.from_pretrained(str(evaluation_setup / "model"))
    transform = image_transform(model.visual.image_size, is_train=False)
    from PIL import Image

    folders = sorted((evaluation_setup / "colours" / "images").iterdir())
    paths = [(p, i) for i, f in enumerate(folders) for p in sorted(f.iterdir()) if p.name != "zz_broken.jpg"]
    images = paddle.to_tensor(np.stack([transform(Image.open(p)) for p, _ in paths]))
    targets = np.array([i for _, i in paths])
    with paddle.no_grad():
        image_features = model.encode_image(images, normalize=True).numpy()
        names = [f"{c} shape" for c in sorted(COLOURS)]
        classifier = []
        for name in names:
            ids = paddle.to_tensor(SimpleTokenizer(context_length=16)([f"a {name}", f"a picture of a {name}"]))
            mean = model.encode_text(ids, normalize=True).numpy().mean(0)
            classifier.append(mean / np.linalg.norm(mean))
    top1 = 100 * np.mean((image_features @ np.stack(classifier).T).argmax(1) == targets)
    assert results["colours"]["top1"] == pytest.approx(top1)
    assert results["colours"]["num_samples"] == 48 and results["colours"]["skipped"] == 1
    assert "top4" in results["colours"] and "top5" not in results["colours"]  # 4 classes: top-k, k = 4

    records = json.loads((setup / "shapes" / "annotations" / "coco_karpathy_test.json").read_text())
    all_images = paddle.to_tensor(np.stack([transform(Image.open(setup / "shapes" / "images" / r["image"]))
                                            for r in records]))
    captions = [c for r in records for c in r["caption"]]
    owner = np.repeat(np.arange(len(records)), [len(r["caption"]) for r in records])
    with paddle.no_grad():
        expected = retrieval_metrics(model.encode_image(all_images, normalize=True).numpy(),
                                     model.encode_text(paddle.to_tensor(SimpleTokenizer(context_length=16)(captions)), normalize=True).numpy(),
                                     owner)
    for key, value in expected.items():
        assert results["retrieval"][key] == pytest.approx(value, abs=1e-6), key


def test_cached_classifier_is_reused_only_for_the_same_weights(evaluation_setup, setup, tmp_path, caplog):
    cache = tmp_path / "cache"
    evaluate(evaluation_setup, setup, tmp_path / "a", "--classifier_cache", str(cache))
    assert len(list(cache.glob("*.npy"))) == 1
    with caplog.at_level(logging.INFO):
        evaluate(evaluation_setup, setup, tmp_path / "b", "--classifier_cache", str(cache))
    assert "zero-shot classifier from the cache" in caplog.text
    changed = AutoModel.from_pretrained(str(evaluation_setup / "model"))
    weight = changed.text.ln_final.weight
    weight.set_value(weight * 1.5)
    changed.save_pretrained(tmp_path / "changed")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_zero_shot_eval(["--model", str(tmp_path / "changed"), "--classification_eval",
                            str(evaluation_setup / "colours"), "--output_dir", str(tmp_path / "c"),
                            "--classifier_cache", str(cache)])
    assert "from the cache" not in caplog.text
    assert len(list(cache.glob("*.npy"))) == 2


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "images" / "purple").mkdir(), "class folder\\(s\\) without images: purple"),
    (lambda d: (d / "labels.txt").write_text("one\ntwo\n"), "2 names for 4 class folders"),
    (lambda d: (d / "templates.txt").write_text("# prompts\na {}\na picture\n"), "templates.txt:3: template 'a picture'"),
], ids=["empty_class_folder", "labels_length", "template_without_placeholder"])
def test_bad_classification_input_names_the_file_and_line(evaluation_setup, tmp_path, breakage, message):
    folder = tmp_path / "colours"
    shutil.copytree(evaluation_setup / "colours", folder)
    breakage(folder)
    with pytest.raises(ValueError, match=message):
        run_zero_shot_eval(["--model", str(evaluation_setup / "model"), "--classification_eval", str(folder),
                            "--output_dir", str(tmp_path / "out")])


def test_two_process_evaluation_equals_one_process(evaluation_setup, setup, tmp_path):
    single = evaluate(evaluation_setup, setup, tmp_path / "one")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the CPU launcher reads "" as one GPU named ""
    args = ["--model", str(evaluation_setup / "model"), "--classification_eval", str(evaluation_setup / "colours"),
            "--retrieval_eval", str(setup / "shapes" / "annotations" / "coco_karpathy_test.json"),
            "--per_device_eval_batch_size", "16", "--output_dir", str(tmp_path / "two")]
    result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                             "--log_dir", str(tmp_path / "log"), str(SCRIPT), *args],
                            env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert result.returncode == 0, f"{result.stderr[-2000:]}\n{logs}"
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["colours"] == pytest.approx(single["colours"])
    for key, value in single["retrieval"].items():
        assert two["retrieval"][key] == pytest.approx(value, abs=1e-6), key


def test_the_exported_model_evaluates_like_the_eager_one(evaluation_setup, setup, tmp_path):
    from paddlemix.tools.export import export

    export(AutoModel.from_pretrained(str(evaluation_setup / "model")), tmp_path / "export")
    eager = evaluate(evaluation_setup, setup, tmp_path / "eager")
    inference = run_zero_shot_eval(["--model", str(tmp_path / "export"), "--backend", "inference",
                                    "--classification_eval", str(evaluation_setup / "colours"), "--retrieval_eval",
                                    str(setup / "shapes" / "annotations" / "coco_karpathy_test.json"),
                                    "--per_device_eval_batch_size", "16", "--output_dir", str(tmp_path / "inference")])
    assert inference["colours"] == pytest.approx(eager["colours"])
    for key, value in eager["retrieval"].items():
        assert inference["retrieval"][key] == pytest.approx(value, abs=1e-3), key
