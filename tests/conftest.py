"""Fixtures shared by several test modules."""

import pytest

from trainer_helpers import make_setup


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A directory with a tiny CLIP config (tiny.json) and the shapes set (shapes/)."""
    return make_setup(tmp_path_factory.mktemp("trainer"))
