"""Fixtures shared by several test modules (helpers that are not fixtures live in the *_fixtures modules)."""
from __future__ import annotations

import pytest

from annotation import Store


@pytest.fixture
def store(tmp_path):
    """A new, empty workspace store, closed after the test."""
    with Store(tmp_path / "ws") as opened:
        yield opened
