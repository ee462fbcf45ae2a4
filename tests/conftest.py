"""Fixtures shared by several test modules (helpers that are not fixtures live in the *_fixtures modules)."""
from __future__ import annotations

import os

import pytest

os.environ["ADASAM_COMPILE"] = "0"  # the suite decodes eagerly (a compile per model shape would cost minutes);
# tests/test_model_decoder.py turns it on where compiled decoding is the subject

from annotation import Store


@pytest.fixture
def store(tmp_path):
    """A new, empty workspace store, closed after the test."""
    with Store(tmp_path / "ws") as opened:
        yield opened
