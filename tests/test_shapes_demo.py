"""The README's main job: train on the embedded shapes set, then zero-shot evaluate."""

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "paddlemix" / "examples" / "clip" / "run_shapes_demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("run_shapes_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_shapes_demo_learns_above_chance_in_60_steps_and_writes_the_heat_map(tmp_path):
    metrics = load_demo().main(["--output_dir", str(tmp_path), "--max_steps", "60"])
    chance_top5 = 5 * metrics["chance_top1"]
    assert metrics["num_samples"] == 96
    # 60 steps give top-1 9.4%, top-5 46.9% on AMD EPYC (chance 2.1%, 10.4%; 40 steps are still at chance):
    # less than half of that is the bar
    assert metrics["top1"] >= 2 * metrics["chance_top1"] and metrics["top5"] >= 2 * chance_top5
    with Image.open(metrics["heat_map"]) as heat_map:
        assert heat_map.format == "PNG" and min(heat_map.size) > 100
    assert (tmp_path / "model" / "model_state.pdparams").is_file()


@pytest.mark.slow
def test_shapes_demo_learns_well_above_chance(tmp_path):
    metrics = load_demo().main(["--output_dir", str(tmp_path)])
    assert metrics["top1"] > 10 * metrics["chance_top1"]
