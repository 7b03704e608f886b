"""Fixtures shared by several test modules."""

import urllib.error

import pytest

from trainer_helpers import make_setup


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
