"""What the export tests share: loading paddlemix's exports in the producers' own code (the reference venv)."""

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import paddle

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_PYTHON = Path(os.environ.get("PPMIX_REFERENCE_PYTHON", Path(__file__).parents[2] / "reference/.venv/bin/python"))


def save_paddlemix_features(model, inputs, directory: Path) -> None:
    """The model's features of the fixture `inputs` (image, text) as `directory`/paddlemix_io.npz, which
    check_exports.py compares with what the producer computes from the exported files."""
    with paddle.no_grad():
        image = model.encode_image(paddle.to_tensor(inputs["image"])).numpy()
        text = model.encode_text(paddle.to_tensor(inputs["text"])).numpy()
    np.savez(directory / "paddlemix_io.npz", image=inputs["image"], text=inputs["text"],
             image_features=image, text_features=text)


def check_exports(directories: Sequence[Path]) -> List[Dict]:
    """Run tests/fixtures/check_exports.py on the exported `directories` in the reference venv; its
    report, one record per directory. Fails the calling test when the producer's code rejects any."""
    result = subprocess.run([str(REFERENCE_PYTHON), str(FIXTURES / "check_exports.py"), *map(str, directories)],
                            capture_output=True, text=True)
    report = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print("\n".join(map(json.dumps, report)))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return report
