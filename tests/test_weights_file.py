"""`.pdparams` files are pickles: paddlemix reads them with an unpickler that builds only arrays and
plain containers, so a crafted file is refused, naming the file, before any of its code runs."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix import AutoModel
from paddlemix.models.weights_file import UnsafeWeightsFileError, read_pdparams
from paddlemix.tools.convert import main as convert_main

FIXTURES = Path(__file__).parent / "fixtures"
PADDLEMIX_CLIP = FIXTURES / "paddlemix" / "pmix_clip"


class RunsCode:
    """Unpickling this calls os.system: what a malicious weights file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_model_directory(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(PADDLEMIX_CLIP, target)
    state = paddle.load(str(target / "model_state.pdparams"), return_numpy=True)
    state["logit_scale"] = RunsCode(tmp_path / "code_ran")
    with open(target / "model_state.pdparams", "wb") as file:
        pickle.dump(state, file, protocol=4)
    return target


def test_paddle_save_state_dict_reads_as_paddle_load_gives_it(tmp_path):
    state = {"w": paddle.randn([3, 4]), "b16": paddle.randn([5]).astype("bfloat16"),
             "h": paddle.randn([2, 2]).astype("float16"), "steps": paddle.to_tensor([7], dtype="int64")}
    path = tmp_path / "model_state.pdparams"
    paddle.save(state, str(path))
    read = read_pdparams(path)
    assert set(read) == set(state)
    for key, value in state.items():
        expected = value.astype("float32").numpy() if key == "b16" else value.numpy()
        np.testing.assert_array_equal(read[key], expected, err_msg=key)
        assert read[key].dtype == expected.dtype


def test_arrays_split_by_old_pickle_protocols_are_joined(tmp_path):
    whole = np.arange(10, dtype=np.float32).reshape(2, 5)
    flat = whole.ravel()
    saved = {"big@@.0": flat[:6], "big@@.1": flat[6:], "small": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 5), "slices": ["big@@.0", "big@@.1"]}}}
    path = tmp_path / "split.pdparams"
    with open(path, "wb") as file:
        pickle.dump(saved, file, protocol=2)
    read = read_pdparams(path)
    assert sorted(read) == ["big", "small"]
    np.testing.assert_array_equal(read["big"], whole)


def test_crafted_pickle_is_refused_naming_the_file_and_runs_nothing(tmp_path):
    target = crafted_model_directory(tmp_path)
    with pytest.raises(UnsafeWeightsFileError, match=r"model_state\.pdparams.*'posix\.system'"):
        read_pdparams(target / "model_state.pdparams")
    with pytest.raises(UnsafeWeightsFileError, match="model_state.pdparams"):
        AutoModel.from_pretrained(str(target))
    assert not (tmp_path / "code_ran").exists()
    assert paddle.load(str(target / "model_state.pdparams")) is not None  # what paddle.load would have done:
    assert (tmp_path / "code_ran").exists()  # the marker proves the file really runs code when unpickled


def test_convert_cli_refuses_a_crafted_pdparams_and_writes_nothing(tmp_path):
    target = crafted_model_directory(tmp_path)
    output = tmp_path / "out"
    assert convert_main(["--source", "paddlemix", "--model", str(target / "config.json"),
                         "--checkpoint", str(target / "model_state.pdparams"), "--output", str(output)]) == 1
    assert not output.exists()
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable .pdparams file"),
    (b"\x80\x04\x95", "not a readable .pdparams file"),
    (pickle.dumps([1, 2]), "holds a dict of arrays, this one a list"),
    (pickle.dumps({"w": "text"}), "entry 'w' is a str, not an array"),
    (pickle.dumps({"w": np.array([object()], dtype=object)[:0]}), "entry 'w' is a object array"),
])
def test_a_file_that_is_not_a_state_dict_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.pdparams"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        read_pdparams(path)
    assert str(path) in str(raised.value)
