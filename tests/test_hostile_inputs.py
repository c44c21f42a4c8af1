"""Hostile inputs, round two: overrides naming code, broken stdout, signals, killed runs, temporaries, output
locations, infrastructure faults, bad annotation fields and odd folder entries.

Each test provokes one fault and checks the contract: bad input is one line, exit 2 and no report; the exit
code follows the verdict whatever happens to stdout; a signal ends with 128 + its number and leaves nothing that
looks finished; one bad page never loses the others; an infrastructure fault is named as such.  Runs are
vision-only on the meta device (shapes only); no expected number is copied from a measurement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tiny_snapshots import tiny_snapshot

import reports
from tests.test_verify_cli import run_cli
from verify.cli import main_vision

REPO = Path(__file__).resolve().parents[1]
REPORT_FILES = set(reports.REPORT_FILES.values())
REPORTS_HTML = reports.REPORT_FILES["html"]
VISION = "import sys; from verify.cli import main_vision; sys.exit(main_vision())"


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment: this checkout first, a private cache and HOME, no MPLCONFIGDIR of ours."""
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(PYTHONPATH=str(REPO), DSOCR_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    env.update(extra)
    return env


def script(code: str, *argv: Any) -> list[str]:
    return [sys.executable, "-c", code, *map(str, argv)]


def finished_runs(out: Path) -> list[Path]:
    """Visible run folders; each must hold every report (a half-written one never looks finished)."""
    runs = [d for d in out.iterdir() if not d.name.startswith(".")] if out.exists() else []
    for d in runs:
        assert {p.name for p in d.iterdir()} == REPORT_FILES, d
    return runs


def one_line_no_traceback(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ---- 1: --override changes values only; a run without a verdict never exits 0 --------------------------------

CODE_OVERRIDES = [
    "composites.prefill._target_=sys.exit",
    "+composites.prefill._target_=sys.exit",
    "++composites.prefill._target_=sys.exit",
    "~composites.prefill._target_",
    "vision.sam._partial_=true",
    "+x={_target_:os.system,_args_:[true]}",
    "vision.clip._recursive_=false",
    "vision.clip._convert_=all",
    "+x=${composites.prefill}",  # an interpolation copying a node that names code
    "+y=get",  # with the next one: '_tar' + 'get_' assembled by interpolation, decoded into a node
]


@pytest.mark.parametrize("override", CODE_OVERRIDES)
def test_override_naming_code_is_refused_with_one_line(override, cache_dir, tmp_path, capsys):
    argv = ["--override", override]
    if override == "+y=get":
        argv += ["--override", "+z='${oc.decode:\"{_tar${y}_: os.system}\"}'"]
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 1, "--quiet", *argv, "--output-dir", out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "overrides change values only" in err
    assert not out.exists()


def test_analytic_cli_refuses_an_override_naming_code(capsys):
    from analytic.cli import main

    assert run_cli(main, "--width", 640, "--height", 640, "--override", "composites.prefill._target_=sys.exit") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "names code (_target_)" in err


def test_sys_exit_0_inside_the_analytic_model_is_exit_2(cache_dir, tmp_path, monkeypatch, capsys):
    import analytic.model

    monkeypatch.setattr(analytic.model.CostModel, "estimate", lambda self, *a, **k: sys.exit(0))
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 1, "--quiet", "--output-dir", out) == 2
    assert "SystemExit(0)" in capsys.readouterr().err and not out.exists()


def test_sys_exit_0_inside_the_vendor_fails_that_page(cache_dir, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("vendor_shim.measure")
    monkeypatch.setattr(module, "measure", lambda workload, **kw: sys.exit(0))
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 2, "--quiet", "--output-dir", out) == 3
    (run_dir,) = finished_runs(out)
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["verdict"] == "ERROR" and all("SystemExit" in p["error"] for p in doc["pages"])


def test_a_body_that_ends_without_a_verdict_never_exits_0(capsys):
    from core.exits import run_console

    assert run_console("prog", lambda verdict: sys.exit(0)) == 1
    assert "without a verdict" in capsys.readouterr().err
    assert run_console("prog", lambda verdict: sys.exit(verdict.decide(0))) == 0  # a decided verdict stands


# ---- 2: the exit code follows the verdict, whatever happens to stdout -------------------------------------------


def closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write is EPIPE (as after `| head -n1` exits)."""
    read, write = os.pipe()
    os.close(read)
    return write


def run_with_stdout(argv: list[str], stdout: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`argv` with stdout on /dev/full or a closed pipe; stderr captured."""
    fd = closed_pipe() if stdout == "closed-pipe" else os.open("/dev/full", os.O_WRONLY)
    try:
        return subprocess.run(
            argv, stdout=fd, stderr=subprocess.PIPE, text=True, env=child_env(tmp_path), cwd=tmp_path, timeout=300
        )
    finally:
        os.close(fd)


@pytest.fixture(scope="module", params=["closed-pipe", "/dev/full"])
def broken_stdout_run(request, small_page, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """A vision run in its own process with stdout broken, in a private cache and HOME (see child_env): the
    broken-stdout test and the matplotlib test read the same two runs."""
    tmp = tmp_path_factory.mktemp("broken-stdout")
    argv = script(VISION, "--images", small_page, "--quiet", "--output-dir", tmp / "runs")
    return run_with_stdout(argv, request.param, tmp), tmp


def test_verify_with_a_broken_stdout_exits_per_its_verdict(broken_stdout_run):
    r, tmp = broken_stdout_run
    (run_dir,) = finished_runs(tmp / "runs")
    assert json.loads((run_dir / "report.json").read_text())["verdict"] == "PASS"
    assert r.returncode == 0
    assert "stdout could not be written" in one_line_no_traceback(r.stderr)


ANALYTIC = "import sys; from analytic.cli import main; sys.exit(main())"
MEASURE = "import sys; from vendor_shim.cli import main; sys.exit(main())"
DIFF = "import sys; from drift.cli import main; sys.exit(main())"


@pytest.mark.parametrize("stdout", ["closed-pipe", "/dev/full"])
@pytest.mark.parametrize("json_out", [False, True])
def test_analytic_with_a_broken_stdout_exits_0_without_a_traceback(stdout, json_out, tmp_path):
    argv = script(ANALYTIC, "--width", 640, "--height", 640, *(["--json"] if json_out else []))
    r = run_with_stdout(argv, stdout, tmp_path)
    assert r.returncode == 0
    assert "stdout could not be written" in one_line_no_traceback(r.stderr)


def test_measure_and_diff_with_a_broken_stdout_exit_per_their_verdict(tmp_path):
    trace = tmp_path / "t.json"
    argv = ["--width", 640, "--height", 640, "--device", "meta", "--vision-only", "--no-fvcore", "--json"]
    r = run_with_stdout(script(MEASURE, *argv, "--out", trace), "/dev/full", tmp_path)
    assert r.returncode == 0 and json.loads(trace.read_text())["complete"] is True
    assert "stdout could not be written" in one_line_no_traceback(r.stderr)
    r = run_with_stdout(script(DIFF, trace, trace), "closed-pipe", tmp_path)
    assert r.returncode == 0
    assert "stdout could not be written" in one_line_no_traceback(r.stderr)


# ---- 3 and 4: signals end with 130 / 143 and leave nothing that looks finished; killed runs are never read -------


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(ready: Any, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.0005)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_with_its_code_one_line_and_nothing_finished(signum, code, tmp_path):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    argv = script(VISION, "--limit", 3, "--quiet", "--output-dir", out)
    # the child starts with SIGINT at its default, as from a terminal: a runner started in the background (a shell's
    # `&`) ignores SIGINT, the child would inherit that, and Python honours an inherited ignore
    proc = subprocess.Popen(
        argv, env=child_env(tmp_path), cwd=tmp_path, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default
    )
    wait_for(lambda: (cache / "traces").exists(), proc)  # main is running: the cache is probed before the run
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert f"interrupted by {signal.Signals(signum).name}" in one_line_no_traceback(err)
    assert finished_runs(out) == []
    assert not out.exists() or list(out.glob(".*")) == []


def test_sigterm_while_the_reports_are_written_leaves_no_staging_folder(small_page, tmp_path):
    out = tmp_path / "runs"
    argv = script(VISION, "--images", small_page, "--quiet", "--output-dir", out)
    proc = subprocess.Popen(argv, env=child_env(tmp_path), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and any(out.iterdir()), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    runs = finished_runs(out)
    assert list(out.glob(".*")) == []  # the staging folder is removed on the way out
    # the signal came while writing (143, no run) or just after the rename (the run is complete)
    assert (proc.returncode, len(runs)) in {(143, 0), (143, 1), (0, 1)}, err


def fake_staging(out: Path, pid: int, age_s: float = 0, run_id: str = "20260101-000000") -> Path:
    """A staging folder as a killed writer leaves it: every report, under the writer's hidden name."""
    staging = out / f".{run_id}.partial-{pid}-abcd1234"
    staging.mkdir(parents=True)
    for name in REPORT_FILES:
        (staging / name).write_text("{}")
    if age_s:
        t = time.time() - age_s
        os.utime(staging, (t, t))
    return staging


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_staging_folder_is_never_read_as_a_run(tmp_path):
    from drift.load import DiffInputError, load_side

    out = tmp_path / "runs"
    staging = fake_staging(out, dead_pid())
    with pytest.raises(DiffInputError, match=r"no report\.json"):
        load_side(out)
    with pytest.raises(DiffInputError, match="never finished"):
        load_side(staging)
    with pytest.raises(DiffInputError, match="never finished"):
        load_side(staging / "report.json")


def test_the_next_run_removes_stale_staging_folders_only(cache_dir, small_page, tmp_path):
    out = tmp_path / "runs"
    stale = fake_staging(out, dead_pid())
    live = out / f".20260101-000001.partial-{os.getppid()}-abcd1234"  # a live writer (our parent process)
    live.mkdir()
    old = fake_staging(out, os.getppid(), age_s=2 * 3600, run_id="20260101-000002")  # alive pid, hours old: stale
    foreign = out / ".not-ours"  # hidden, but not a staging name: never touched
    foreign.mkdir()
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 0
    assert not stale.exists() and not old.exists() and live.exists() and foreign.exists()
    assert len(finished_runs(out)) == 1
    from drift.load import load_side

    assert load_side(out).label == str(out)  # one finished run: the folder reads as that run


# ---- 5 and 6: unique temporaries, and the output location checked before any work -------------------------------


def test_measure_out_never_touches_a_file_named_like_its_temporary(tmp_path):
    from vendor_shim.cli import main

    out = tmp_path / "m.json"
    bystander = tmp_path / "m.tmp"  # a fixed temporary name would be this one
    bystander.write_text("someone else's")
    argv = ["--width", 640, "--height", 640, "--device", "meta", "--vision-only", "--no-fvcore", "--out", out]
    assert run_cli(main, *argv) == 0
    assert bystander.read_text() == "someone else's" and json.loads(out.read_text())["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.tmp"]


def test_no_fixed_temporary_names_in_the_tree():
    """Every temporary is made by tempfile (or carries pid and random): no `.tmp` name derived from a target."""
    offenders = []
    for path in [*REPO.glob("*/*.py"), *REPO.glob("*/*/*.py")]:
        if path.parts[len(REPO.parts)] in ("tests", ".venv"):
            continue
        text = path.read_text(encoding="utf-8")
        if 'with_suffix(".tmp")' in text or '+ ".tmp"' in text or "with_suffix('.tmp')" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


@pytest.mark.parametrize("where", ["read-only folder", "under a file", "a folder itself"])
def test_measure_out_that_cannot_be_written_is_exit_2_before_the_measurement(where, tmp_path, monkeypatch, capsys):
    import importlib

    from vendor_shim.cli import main

    calls: list[Any] = []
    monkeypatch.setattr(importlib.import_module("vendor_shim.measure"), "measure", lambda *a, **k: calls.append(a))
    folder = tmp_path / "ro"
    if where == "read-only folder":
        folder.mkdir(mode=0o500)
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user that writes into read-only folders (root)")
    elif where == "under a file":
        folder.write_text("a file")
    else:
        folder.mkdir()
    out = folder if where == "a folder itself" else folder / "m.json"
    argv = ["--width", 640, "--height", 640, "--device", "meta", "--vision-only", "--no-fvcore", "--out", out]
    assert run_cli(main, *argv) == 2
    line = one_line_no_traceback(capsys.readouterr().err)
    assert calls == [] and ("is a folder" in line or "cannot be written" in line)


# ---- 8: a bad annotation field makes that page bad (or is read from the image), never the run ------------------


def omni(tmp_path: Path, entries: list[dict[str, Any]], images: list[str]) -> Path:
    root = tmp_path / "omni"
    (root / "images").mkdir(parents=True)
    for name in images:
        Image.new("RGB", (640, 640), "white").save(root / "images" / name)
    (root / "OmniDocBench.json").write_text(json.dumps(entries))
    return root


def good(name: str) -> dict[str, Any]:
    return {"page_info": {"image_path": name, "width": 640, "height": 640, "page_attribute": {"data_source": "book"}}}


def test_a_bad_annotation_field_costs_only_its_page(cache_dir, tmp_path):
    names = [f"p{i}.png" for i in range(6)]
    no_width = {"page_info": {"image_path": "w.png", "height": 640}}  # the image gives the size
    bad_height = {"page_info": {"image_path": "h.png", "width": 640, "height": "tall"}}
    no_path = {"page_info": {"width": 640, "height": 640}}  # no image at all: this page is bad
    no_info = {"layout_dets": []}
    entries = [*map(good, names), no_width, bad_height, no_path, no_info]
    root = omni(tmp_path, entries, [*names, "w.png", "h.png"])
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--omnidocbench", root, "--quiet", "--output-dir", out) == 2  # bad pages: exit 2
    (run_dir,) = finished_runs(out)
    pages = {p["page"]["page_id"]: p for p in json.loads((run_dir / "report.json").read_text())["pages"]}
    assert all(pages[n.removesuffix(".png")]["passed"] for n in names)
    for page_id in ("w", "h"):  # the size read from the image, with a note
        assert pages[page_id]["passed"] and (pages[page_id]["page"]["width"], pages[page_id]["page"]["height"]) == (
            640,
            640,
        )
        assert "read from the image" in pages[page_id]["page"]["attributes"]["annotation_note"]
    assert "no page_info.image_path" in pages["entry-8"]["error"]
    assert "no page_info object" in pages["entry-9"]["error"]


def test_data_source_as_a_list_or_missing(tmp_path):
    from verify.pages import PageSourceError, load_omnidocbench

    listed = good("a.png")
    listed["page_info"]["page_attribute"]["data_source"] = ["book", "note"]
    root = omni(tmp_path, [listed, good("b.png")], ["a.png", "b.png"])
    assert [p.page_id for p in load_omnidocbench(root, data_sources=["note"])] == ["a"]
    assert [p.page_id for p in load_omnidocbench(root, data_sources=["book"])] == ["a", "b"]
    (root / "OmniDocBench.json").write_text(json.dumps([{"page_info": {"image_path": "a.png"}}]))
    with pytest.raises(PageSourceError, match="no page of this annotation names a data_source") as exc:
        load_omnidocbench(root, data_sources=["book"])
    assert "None" not in str(exc.value)


# ---- 9: folder entries, limits, invisible characters, third-party caches, tolerances -----------------------------


def test_dangling_and_looping_links_in_a_folder_are_bad_pages(cache_dir, tmp_path):
    from verify.pages import checked_page, load_image_files

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "ok.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    pages = {p.page_id: p for p in load_image_files([folder])}
    assert set(pages) == {"ok", "dangling", "loop"}
    assert pages["ok"].error is None
    assert "no such image file" in pages["dangling"].error
    assert "cannot be read" in pages["loop"].error
    assert checked_page(pages["ok"]).width == 64


def test_limit_opens_only_the_pages_it_keeps(tmp_path, monkeypatch):
    import verify.pages

    folder = tmp_path / "many"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "p0000.png")
    for i in range(1, 2001):
        os.link(folder / "p0000.png", folder / f"p{i:04d}.png")
    opened: list[Path] = []
    real = verify.pages.page_size
    monkeypatch.setattr(verify.pages, "page_size", lambda path, **kw: opened.append(path) or real(path, **kw))
    pages = verify.pages.load_image_files([folder], limit=2)
    assert [p.page_id for p in pages] == ["p0000", "p0001"] and len(opened) == 2
    assert len(verify.pages.load_image_files([folder], sample=3, seed=1)) == 3 and len(opened) == 5


def test_bidi_and_zero_width_characters_are_escaped(cache_dir, tmp_path, capsys):
    from reports.safe import printable, safe_text

    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert safe_text("a\u200bb\u2066c\ufeffd\U000e0041") == "a\\u200bb\\u2066c\\ufeffd\\U000e0041"
    assert safe_text("tab\tand\nnewline, é, 日本") == "tab\tand\nnewline, é, 日本"
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "page\u202e1.png")
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", folder, "--quiet", "--output-dir", out) == 0
    (run_dir,) = finished_runs(out)
    for name in REPORT_FILES:
        assert "\u202e" not in (run_dir / name).read_text(encoding="utf-8"), name
    assert "page\\u202e1" in (run_dir / "report.md").read_text(encoding="utf-8")
    assert "\u202e" not in capsys.readouterr().out


def test_matplotlib_writes_under_the_cache_not_home(broken_stdout_run):
    """A separate process (matplotlib reads MPLCONFIGDIR once, at its first import); where stdout goes is
    beside the point, so the broken-stdout runs serve: each wrote its HTML report's charts."""
    r, tmp = broken_stdout_run
    assert r.returncode == 0, r.stderr
    (run_dir,) = finished_runs(tmp / "runs")
    assert (run_dir / REPORTS_HTML).is_file()
    home = tmp / "home"
    assert not home.exists() or list(home.rglob("*")) == []
    assert (tmp / "cache" / "matplotlib").is_dir()


@pytest.mark.parametrize("tolerance", ["decode=0.01", "prefill.tensor_flops=0.01", "qwen2_encoder=0.01"])
def test_vision_only_refuses_tolerances_of_stages_it_does_not_run(tolerance, cache_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--tolerance", tolerance, "--output-dir", out) == 2
    assert "bad --tolerance" in one_line_no_traceback(capsys.readouterr().err) and not out.exists()


def test_verdict_decides_once():
    from core.exits import Verdict

    v = Verdict()
    assert v.code is None and v.decide(3) == 3 and v.code == 3


# ---- 7: infrastructure faults are named as such, never blamed on the vendor or the snapshot --------------------

TINY = tiny_snapshot("deepseek-ocr")
REMOTE = ["--backend", "remote-code", "--vendor-dir", TINY, "--trust-remote-code", "--limit", 1, "--quiet"]


@pytest.mark.parametrize("fault", ["read-only", "under a file"])
def test_remote_code_with_an_unwritable_environment_cache_is_a_cache_fault(fault, tmp_path, monkeypatch, capsys):
    """The pinned environment is not built yet and its cache folder cannot take it: exit 2 naming the cache."""
    import errno
    import tempfile

    monkeypatch.delenv("DSOCR_REMOTE_ENV", raising=False)
    base = tmp_path / "base"
    if fault == "under a file":
        base.write_text("a file where the cache folder should be")
        monkeypatch.setenv("DSOCR_CACHE_DIR", str(base / "cache"))
    else:  # as the kernel answers for a read-only mount (root writes through chmod, so the answer is injected)
        monkeypatch.setenv("DSOCR_CACHE_DIR", str(base))

        def read_only(*args: Any, **kwargs: Any) -> str:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "runs"
    assert run_cli(main_vision, *REMOTE, "--cache-dir", tmp_path / "traces", "--output-dir", out) == 2
    line = one_line_no_traceback(capsys.readouterr().err)
    assert "environment cache" in line and "DSOCR_CACHE_DIR" in line and "vendor" not in line.split(":")[0]
    assert not out.exists()


def test_a_corrupted_pinned_environment_is_named_not_the_snapshot(tmp_path, monkeypatch, capsys):
    """A file of the pinned environment is garbage (the snapshot is fine): the environment is named, with the fix.

    The environment is a stand-in folder (DSOCR_REMOTE_ENV), so nothing is downloaded; the worker subprocess,
    the snapshot and the error path are the real ones.
    """
    env = tmp_path / "remote-env-test"
    for package in ("transformers", "tokenizers"):
        (env / package).mkdir(parents=True)
        (env / package / "__init__.py").write_text("version = '4.46.3'\n")
    (env / "transformers" / "__init__.py").write_bytes(b"\x00\x9c garbage from a bad disk (\n")
    monkeypatch.setenv("DSOCR_REMOTE_ENV", str(env))
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    assert run_cli(main_vision, *REMOTE, "--output-dir", out) == 2
    line = one_line_no_traceback(capsys.readouterr().err)
    assert f"pinned remote-code environment {env} is broken" in line and f"delete {env} to rebuild it" in line
    assert str(TINY) not in line and not out.exists()
