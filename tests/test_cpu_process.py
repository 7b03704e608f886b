"""prepare_cpu_process's MKL setting: AVX2 kernels on AMD CPUs only, never over the user's value, off
with PPMIX_MKL_AVX2_ON_AMD=0; and a matrix product under it computes what numpy computes."""

import os
import subprocess
import sys

import pytest

from paddlemix.utils import cpu_process
from paddlemix.utils.cpu_process import MKL_CPU_TYPE_VARIABLE, MKL_OPT_OUT_VARIABLE, use_avx2_mkl_kernels_on_amd


@pytest.fixture()
def clean_environment(monkeypatch):
    monkeypatch.delenv(MKL_CPU_TYPE_VARIABLE, raising=False)
    monkeypatch.delenv(MKL_OPT_OUT_VARIABLE, raising=False)
    return monkeypatch


@pytest.mark.parametrize("vendor, expected", [("AuthenticAMD", "5"), ("GenuineIntel", None), ("", None)])
def test_only_an_amd_cpu_gets_the_avx2_kernels(clean_environment, vendor, expected):
    clean_environment.setattr(cpu_process, "cpu_vendor", lambda: vendor)
    assert use_avx2_mkl_kernels_on_amd() is (expected is not None)
    assert os.environ.get(MKL_CPU_TYPE_VARIABLE) == expected


def test_the_users_value_and_the_opt_out_are_kept(clean_environment):
    clean_environment.setattr(cpu_process, "cpu_vendor", lambda: "AuthenticAMD")
    clean_environment.setenv(MKL_CPU_TYPE_VARIABLE, "2")
    assert not use_avx2_mkl_kernels_on_amd() and os.environ[MKL_CPU_TYPE_VARIABLE] == "2"
    clean_environment.delenv(MKL_CPU_TYPE_VARIABLE)
    clean_environment.setenv(MKL_OPT_OUT_VARIABLE, "0")
    assert not use_avx2_mkl_kernels_on_amd() and MKL_CPU_TYPE_VARIABLE not in os.environ


def test_a_matrix_product_under_the_setting_equals_numpys():
    script = ("from paddlemix.utils.cpu_process import prepare_cpu_process; prepare_cpu_process()\n"
              "import numpy as np, paddle\n"
              "a, b = np.random.default_rng(0).standard_normal((2, 300, 500)).astype('float32')\n"
              "got = paddle.matmul(paddle.to_tensor(a), paddle.to_tensor(b).T).numpy()\n"
              "print(float(np.abs(got - a.astype('float64') @ b.T.astype('float64')).max()))\n")
    env = {k: v for k, v in os.environ.items() if k not in (MKL_CPU_TYPE_VARIABLE, MKL_OPT_OUT_VARIABLE)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-3
