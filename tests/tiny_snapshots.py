"""The project's tiny remote-code snapshots, assembled from datasets/fixtures before the tests use them.

datasets/fixtures keeps every file once: ``tiny_remote_common/`` holds what both families' snapshots
share, ``tiny_remote_snapshot/`` (DeepSeek-OCR) and ``tiny_remote_snapshot_ocr2/`` (DeepSeek-OCR 2)
what is each family's own.  The remote-code backend wants an official snapshot's layout, one flat
folder of .py files and config.json, so the tests run on a folder assembled from the two.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "datasets" / "fixtures"
COMMON = FIXTURES / "tiny_remote_common"
FAMILY_SOURCES = {
    "deepseek-ocr": FIXTURES / "tiny_remote_snapshot",
    "deepseek-ocr-2": FIXTURES / "tiny_remote_snapshot_ocr2",
}


def snapshot_sources(family: str) -> list[Path]:
    """The files a family's snapshot consists of: the shared ones and its own (a name in both is an error)."""
    files: dict[str, Path] = {}
    for folder in (COMMON, FAMILY_SOURCES[family]):
        for path in sorted(folder.iterdir()):
            if not path.is_file() or not (path.suffix == ".py" or path.name == "config.json"):
                continue
            if path.name in files:
                raise ValueError(f"{path}: also in {files[path.name].parent}: a snapshot file lives in one folder")
            files[path.name] = path
    return list(files.values())


def assemble_snapshot(family: str, dest: Path) -> Path:
    """Copy the family's snapshot files into ``dest`` (a new folder) and return it."""
    dest.mkdir(parents=True)
    for path in snapshot_sources(family):
        shutil.copyfile(path, dest / path.name)
    return dest


@functools.cache
def tiny_snapshot(family: str) -> Path:
    """The family's snapshot, assembled once per test process into a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="dsocr-tiny-snapshot-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return assemble_snapshot(family, root / FAMILY_SOURCES[family].name)
