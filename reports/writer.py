"""Writes a run's reports into a fresh run directory, all or nothing.

Files are built in a hidden sibling directory and renamed into place at the
end, so a crash never leaves a half-written report that looks complete, and an
existing run directory is never overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from reports.document import run_document
from reports.frame import comparison_frame
from reports.html import render_html
from reports.markdown import render_markdown
from reports.model import RunResult
from reports.safe import safe_tree
from reports.tables import write_csv

REPORT_FILES = {"markdown": "report.md", "csv": "report.csv", "json": "report.json", "html": "report.html"}


class ReportExistsError(FileExistsError):
    """The run directory is already there; reports never overwrite one."""


def write_reports(run: RunResult, run_dir: Path) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.html in `run_dir` (which must not exist); returns their paths."""
    run_dir = Path(run_dir)
    _refuse_existing(run_dir)
    run = safe_tree(run)  # a file name that is not UTF-8 must not cost the run its reports
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.partial-"))
    try:
        df = comparison_frame(run)  # every format is a view of this one frame
        (staging / REPORT_FILES["markdown"]).write_text(render_markdown(run, df), encoding="utf-8")
        write_csv(run, staging / REPORT_FILES["csv"], df)
        text = json.dumps(run_document(run, df), indent=1, allow_nan=False)
        (staging / REPORT_FILES["json"]).write_text(text + "\n", encoding="utf-8")
        (staging / REPORT_FILES["html"]).write_text(render_html(run, df), encoding="utf-8")
        _refuse_existing(run_dir)  # POSIX rename would silently replace an empty directory
        _rename(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {kind: run_dir / name for kind, name in REPORT_FILES.items()}


def _rename(staging: Path, run_dir: Path) -> None:
    """Move the finished folder into place; another writer that got there first is a ReportExistsError."""
    try:
        os.rename(staging, run_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ReportExistsError(f"run directory {run_dir} appeared while writing: pick the next name") from exc
        raise


def _refuse_existing(run_dir: Path) -> None:
    if run_dir.exists():
        raise ReportExistsError(f"run directory {run_dir} already exists: remove it or pick another --output-dir")
