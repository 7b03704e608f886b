"""Fixtures shared by several test modules."""

import urllib.error

import pytest

from paddlemix.external_ops import fused_ops
from trainer_helpers import make_setup


@pytest.fixture(scope="session", autouse=True)
def fused_ops_built():
    """paddlemix's CPU ops, built (or found) once in the real $PPMIX_HOME before any test: the tests'
    subprocesses (launchers, entry scripts) then load them instead of compiling them on a fresh machine."""
    return fused_ops()


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A directory with a tiny CLIP config (tiny.json) and the shapes set (shapes/)."""
    return make_setup(tmp_path_factory.mktemp("trainer"))


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """An empty $PPMIX_HOME and a urlopen that records each URL and fails as offline."""
    monkeypatch.setenv("PPMIX_HOME", str(tmp_path))
    requested = []

    def offline(url, timeout):
        requested.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    return requested
