"""Fixtures of the end-to-end tests."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def state() -> Iterator[Path]:
    """XDG_STATE_HOME for one test. Not under pytest's tmp_path: the embedded PostgreSQL runs
    as another user and must traverse it, and pytest resets its base directory to 0700."""
    path = Path(tempfile.mkdtemp(prefix="cidev-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
