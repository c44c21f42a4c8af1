"""Fault injection: a real vision-only run killed with SIGKILL at several points, then run to completion.

Whatever the kill interrupted (start-up, a vendor count, a cache write, the report writer), what is
left must never look better than it is: every cache entry under its final name validates as a trace,
and every visible run folder holds every report.  Temporaries (hidden names) may remain; the cache and the
writer never read them.  The pages are two small images (global view only, one workload signature: one vendor
count and one cache write per run, the second page served by the first's count): what is left of a run is
the interpreter's start-up and the report writer, which a killed run cannot share.  Four killed runs plus a full one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import reports
from verify.vendor_measure import valid_cache_trace

REPO = Path(__file__).resolve().parents[1]
REPORT_FILES = set(reports.REPORT_FILES.values())
POLL_S = 0.0005


def _pages(folder: Path) -> list[Path]:
    """500x400 and 640x480: both sides <= 640, so the global view only and the same workload signature."""
    folder.mkdir()
    paths = [folder / "a.png", folder / "b.png"]
    for path, size in zip(paths, [(500, 400), (640, 480)], strict=True):
        Image.new("RGB", size, "white").save(path)
    return paths


def _start(pages: list[Path], cache: Path, out: Path, home: Path) -> subprocess.Popen:
    code = "import sys; from verify.cli import main_vision; sys.exit(main_vision())"
    argv = ["--images", *map(str, pages), "--quiet", "--cache-dir", str(cache), "--output-dir", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), DSOCR_CACHE_DIR=str(home))
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _files(folder: Path, pattern: str) -> set[Path]:
    """The matches below ``folder``; a run renaming or removing a folder while it is walked makes the walk start
    over (the polls race the run they watch)."""
    while True:
        try:
            return set(folder.rglob(pattern)) if folder.exists() else set()
        except FileNotFoundError:
            continue


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], jitter_s: float, limit_s: float = 60) -> None:
    """SIGKILL the run `jitter_s` after `ready()` first holds (or let it end on its own)."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    time.sleep(jitter_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_nothing_looks_complete_unless_it_is(cache: Path, out: Path) -> None:
    for entry in _files(cache, "*.json"):
        doc = json.loads(entry.read_text(encoding="utf-8"))
        assert doc["key"] == entry.stem, entry
        valid_cache_trace(doc["trace"])
    for run_dir in out.iterdir() if out.exists() else []:
        if not run_dir.name.startswith("."):
            assert {p.name for p in run_dir.iterdir()} == REPORT_FILES, run_dir
            json.loads((run_dir / "report.json").read_text(encoding="utf-8"))


def _grows(count: Callable[[], int]) -> Callable[[], Callable[[], bool]]:
    """A kill condition made at the start of a run: `count()` has grown since then."""

    def arm() -> Callable[[], bool]:
        before = count()
        return lambda: count() > before

    return arm


@pytest.mark.slow
def test_killed_runs_leave_no_corrupt_cache_entry_and_no_report_that_looks_complete(tmp_path):
    cache, out, home = tmp_path / "traces", tmp_path / "runs", tmp_path / "home"
    pages = _pages(tmp_path / "pages")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    t0 = time.monotonic()
    # a put makes the entry's folder, then its temporary: either growing means a write is under way
    writes = _grows(lambda: len([p for p in _files(cache, "*") if p.is_dir() or p.match(".[!p]*.tmp")]))
    entries = _grows(lambda: len(_files(cache, "*.json")))
    staging = _grows(lambda: len(_files(out, ".*.partial-*")))
    kill_points = [  # (what, condition armed at the run's start, jitter after it first holds)
        ("during start-up or the first count", lambda: lambda: True, rng.uniform(0.5, 4.0)),
        ("while a cache entry is written", writes, 0.0),
        ("soon after a new cache entry", entries, rng.uniform(0, 0.5)),
        ("while the reports are written", staging, rng.uniform(0, 0.01)),
    ]
    for what, arm, jitter in kill_points:
        proc = _start(pages, cache, out, home)
        _kill_when(proc, arm(), jitter)
        _assert_nothing_looks_complete_unless_it_is(cache, out)
        print(f"killed {what}: rc {proc.returncode} (seed {seed})")
    final = _start(pages, cache, out, home)
    assert final.wait(timeout=120) == 0, f"seed {seed}"
    _assert_nothing_looks_complete_unless_it_is(cache, out)
    newest = max((d for d in out.iterdir() if not d.name.startswith(".")), key=lambda d: d.stat().st_mtime)
    doc = json.loads((newest / "report.json").read_text(encoding="utf-8"))
    assert [p["passed"] for p in doc["pages"]] == [True, True]
    assert doc["pages"][1]["cache_hit"] is True  # one signature: the second page is never counted again
    assert not (home / "traces").exists()  # nothing written outside the named cache and output folders
    print(f"total {time.monotonic() - t0:.1f} s")
