"""The README's main job: train on the embedded shapes set, then zero-shot evaluate."""

import importlib.util
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "paddlemix" / "examples" / "clip" / "run_shapes_demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("run_shapes_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_shapes_demo_trains_evaluates_and_writes_the_heat_map(tmp_path):
    metrics = load_demo().main(["--output_dir", str(tmp_path), "--max_steps", "3"])
    assert metrics["num_samples"] == 96 and 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert Path(metrics["heat_map"]).is_file()
    assert (tmp_path / "model" / "model_state.pdparams").is_file()


@pytest.mark.slow
def test_shapes_demo_learns_well_above_chance(tmp_path):
    metrics = load_demo().main(["--output_dir", str(tmp_path)])
    assert metrics["top1"] > 10 * metrics["chance_top1"]
