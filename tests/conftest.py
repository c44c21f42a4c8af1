"""Fixtures shared by the CLI test files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh cache base (traces, rendered pages) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(path))
    return path
