"""Fixtures of the Julia backend tests (helpers live in _julia_helpers.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # _julia_helpers, _julia_fake_bridge


@pytest.fixture
def fake_bridge():
    from _julia_fake_bridge import FakeBridge

    return FakeBridge()


@pytest.fixture
def clean_runtime():
    """Forget any cached Julia start (success or failure) before and after the test."""
    from pycdeq.julia import _detect, _runtime

    _runtime._reset_for_tests()
    _detect._CACHE.clear()
    yield _runtime
    _runtime._reset_for_tests()
    _detect._CACHE.clear()
