"""Fixtures shared by the CLI test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh cache base (traces, rendered pages) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def small_page(tmp_path_factory) -> Path:
    """One 500x400 white page: both sides <= 640, so the global view only (no crops), the cheapest page that still
    runs every vision stage; for the CLI tests about files, folders and processes, not about page geometry."""
    path = tmp_path_factory.mktemp("small-page") / "small.png"
    Image.new("RGB", (500, 400), "white").save(path)
    return path
