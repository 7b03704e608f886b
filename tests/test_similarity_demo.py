"""The README's main job: the similarity demo writes a heat map of the printed matrix."""

import importlib.util
from pathlib import Path

from PIL import Image

from paddlemix.evaluation.plots import CELL

DEMO = Path(__file__).resolve().parents[1] / "paddlemix" / "examples" / "clip" / "run_similarity_demo.py"


def test_similarity_demo_prints_the_matrix_and_writes_a_png(tmp_path, caplog):
    spec = importlib.util.spec_from_file_location("run_similarity_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    output = tmp_path / "similarity.png"
    with caplog.at_level("INFO"):
        demo.main(["--output", str(output)])
    assert "a blue triangle" in caplog.text
    with Image.open(output) as heat_map:
        rows = len(demo.SHAPES)
        assert heat_map.size[1] == CELL * (rows + 1)
