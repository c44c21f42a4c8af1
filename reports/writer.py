"""Writes a run's reports into a fresh run directory, all or nothing.

Files are built in a hidden sibling directory and renamed into place at the
end, so a crash never leaves a half-written report that looks complete, and an
existing run directory is never overwritten.  The sibling is named
`.<run id>.partial-<pid>-<random>`: every reader skips such folders (`is_partial_run`), and the next
write into the same output folder removes the ones a dead process left (`remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from reports.document import run_document
from reports.frame import Comparison
from reports.html import render_html
from reports.markdown import render_markdown
from reports.model import RunResult
from reports.safe import safe_tree
from reports.tables import write_csv

REPORT_FILES = {"markdown": "report.md", "csv": "report.csv", "json": "report.json", "html": "report.html"}
_STAGING = re.compile(r"^\..+\.partial-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")  # also the pid-less names of older versions
STALE_AFTER_S = 3600  # a staging folder this old is stale whoever made it (writing reports takes seconds)


class ReportExistsError(FileExistsError):
    """The run directory is already there; reports never overwrite one."""


def write_reports(run: RunResult, run_dir: Path) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.html in `run_dir` (which must not exist); returns their paths."""
    run_dir = Path(run_dir)
    _refuse_existing(run_dir)
    run = safe_tree(run)  # a file name that is not UTF-8 must not cost the run its reports
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(run_dir.parent)
    prefix = f".{run_dir.name}.partial-{os.getpid()}-"  # this process's staging folders for this run: ours alone
    try:
        staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=prefix))
        comparison = Comparison.of(run)  # every format is a view of this one frame and its one summary
        (staging / REPORT_FILES["markdown"]).write_text(render_markdown(run, comparison), encoding="utf-8")
        write_csv(run, staging / REPORT_FILES["csv"], comparison.frame)
        # no indent: json's C encoder (indented output takes its pure-Python one, ~10x slower on a large run)
        text = json.dumps(run_document(run, comparison), allow_nan=False)
        (staging / REPORT_FILES["json"]).write_text(text + "\n", encoding="utf-8")
        (staging / REPORT_FILES["html"]).write_text(render_html(run, comparison), encoding="utf-8")
        _refuse_existing(run_dir)  # POSIX rename would silently replace an empty directory
        _rename(staging, run_dir)
    except BaseException:
        # by prefix, not by the name mkdtemp returns: an interrupt (SIGINT, SIGTERM) inside mkdtemp, after its
        # mkdir, never hands the name back
        for ours in run_dir.parent.glob(glob.escape(prefix) + "*"):
            shutil.rmtree(ours, ignore_errors=True)
        raise
    return {kind: run_dir / name for kind, name in REPORT_FILES.items()}


def is_partial_run(path: Path) -> bool:
    """Whether `path` is a writer's staging folder (a run that never finished): readers never take it for a run."""
    return bool(_STAGING.match(Path(path).name))


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in `folder` whose writer is gone (its pid is not alive, or older than
    `STALE_AFTER_S`); a live writer's is left alone, and nothing but our own staging names is touched."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if _is_stale_staging(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _is_stale_staging(entry: Path) -> bool:
    match = _STAGING.match(entry.name)
    try:
        if not match or entry.is_symlink() or not entry.is_dir():
            return False
        old = time.time() - entry.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False
    pid = match.group("pid")
    return old or (pid is not None and int(pid) != os.getpid() and not _alive(int(pid)))


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # OverflowError: not a pid this system can have; keep the folder, age will remove it
    return True


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
