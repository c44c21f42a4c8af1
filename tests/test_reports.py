"""Reports: three files written all-or-nothing, verdict first, failures first, console summary."""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from core.metrics import METRICS
from core.schema import leaf_paths
from reports import REPORT_FILES, ReportExistsError, write_reports
from reports import writer as writer_mod
from reports.console import print_summary
from reports.format import format_bytes, format_flops, format_rel
from reports.markdown import render_markdown
from reports.model import ComparisonRow, PageResult, PageSpec, RunResult


def _rows(page_id: str, bad: tuple[str, str] | None = None) -> list[ComparisonRow]:
    rows = []
    for stage, part in leaf_paths():
        for metric in METRICS:
            if metric != "tensor_flops":
                rows.append(ComparisonRow(page_id, stage, part, metric, None, 10.0, None, None, None, None))
                continue
            vendor = 1_000_000.0
            analytic = 1_050_000.0 if (stage, part) == bad else vendor
            rel = abs(analytic - vendor) / vendor
            ok = rel <= 0.01
            rows.append(
                ComparisonRow(
                    page_id,
                    stage,
                    part,
                    metric,
                    vendor,
                    analytic,
                    analytic - vendor,
                    rel,
                    0.01,
                    ok,
                    None if ok else "sdpa",
                )
            )
    return rows


def _page(page_id: str, **kw) -> PageResult:
    spec = PageSpec(page_id, 1654, 2339, "embedded", synthetic=True, attributes={"data_source": "book"})
    workload = {"w_crop": 2, "h_crop": 3, "n_crops": 6, "n_image_tokens": 903, "prefill_len": 916}
    return PageResult(page=spec, workload=workload, trace={"stages": {}, "wall_s": 1.5}, analytic={"a": 1}, **kw)


def _run(fail: bool = True, error: bool = True) -> RunResult:
    pages = [_page("good", rows=_rows("good"))]
    if fail:
        pages.append(_page("bad", rows=_rows("bad", bad=("clip", "crops"))))
        inf_row = pages[-1].rows[0]
        inf_row.passed, inf_row.rel_delta, inf_row.vendor = False, float("inf"), 0.0
    if error:
        pages.append(
            PageResult(page=PageSpec("broken", 0, 0, "embedded", synthetic=True), error="x | y", error_kind="input")
        )
    return RunResult(
        "r1",
        "run_verify_end2end",
        {"mode": "gundam"},
        {"torch": "2.13.0"},
        pages,
        "2026-01-01T00:00:00",
        "2026-01-01T00:01:00",
        60.0,
    )


def test_all_three_files_written(tmp_path):
    run = _run()
    paths = write_reports(run, tmp_path / "out" / "run1")
    assert {k: p.name for k, p in paths.items()} == REPORT_FILES
    assert sorted(os.listdir(tmp_path / "out")) == ["run1"]  # no staging dir left

    md = paths["markdown"].read_text()
    assert md.startswith("# Verdict: FAIL\n")  # a discrepancy outranks a bad page: the exit code is 1
    assert "Synthetic pages" in md
    # failures come before the per-stage and per-page detail; the worst (inf) failure first
    fail_at, gated_at, pages_at = md.index("## Failures"), md.index("## Gated stages"), md.index("## Pages\n")
    assert fail_at < gated_at < pages_at
    failures = md[fail_at : md.index("## Pages that could not")]
    assert failures.index("| bad | sam | global |") < failures.index("| bad | clip | crops |")
    assert "| good |" not in failures
    assert "x \\| y" in md  # table cells escaped
    page_lines = [ln for ln in md[pages_at:].splitlines() if ln.startswith("| ") and "page" not in ln]
    assert [ln.split("|")[1].strip() for ln in page_lines] == ["bad", "broken", "good"]  # failing pages first

    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(len(p.rows) for p in run.pages)
    assert rows[0]["data_source"] == "book" and rows[0]["w_crop"] == "2"

    doc = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert doc["verdict"] == "FAIL" and doc["synthetic_pages"] is True
    assert doc["pages"][0]["trace"] == {"stages": {}, "wall_s": 1.5}
    assert doc["pages"][1]["rows"][0]["rel_delta"] == "inf"
    assert len(doc["pages"]) == 3 and doc["pages"][2]["error"] == "x | y"


def test_pass_verdict_line(tmp_path):
    md = write_reports(_run(fail=False, error=False), tmp_path / "r")["markdown"].read_text()
    first, _, third = md.splitlines()[:3]
    assert first == "# Verdict: PASS"
    assert third.startswith("PASS: all 1 pages within tolerance (10 gated checks")
    assert "## Failures" not in md


def test_existing_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    with pytest.raises(ReportExistsError, match="already exists"):
        write_reports(_run(), run_dir)
    assert os.listdir(run_dir) == ["keep.txt"]
    assert os.listdir(tmp_path) == ["run"]


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(run, path, *_):
        path.write_text("half a csv")
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(writer_mod, "write_csv", boom)
    with pytest.raises(RuntimeError, match="crash"):
        write_reports(_run(), tmp_path / "run")
    assert os.listdir(tmp_path) == []


def test_console_summary():
    console = Console(record=True, width=200)
    print_summary(_run(), console, {"markdown": "/tmp/runs/r1/report.md"})
    text = console.export_text()
    assert "clip" in text and "crops" in text and "5.00%" in text
    assert text.rstrip().splitlines()[-1].startswith("FAIL: 1 of 3 pages outside tolerance")
    assert "not the real OmniDocBench" in text and "broken" in text


def test_formatting():
    # 1.5e12 / 1e12 = 1.5 -> TFLOP; 2.5e9 -> GFLOP; small counts stay exact
    assert format_flops(1.5e12) == "1.500 TFLOP"
    assert format_flops(2_500_000_000) == "2.500 GFLOP"
    assert format_flops(512) == "512 FLOP"
    assert format_flops(None) == "-"
    assert format_bytes(3 * 2**20) == "3.000 MiB"
    assert format_rel(0.0123) == "1.23%" and format_rel(float("inf")) == "inf" and format_rel(None) == "-"


# ---- odd names and a racing writer -------------------------------------------------------------------


def _odd_run() -> RunResult:
    """Names a Linux file system and a JSON file can hold but UTF-8 cannot: bytes 0xff, an unpaired surrogate."""
    latin1 = os.fsdecode(b"scan-\xff")  # surrogateescape: '\udcff'
    lone = "page-\ud800"
    run = _run(fail=False, error=False)
    run.pages[0].page.page_id = latin1
    run.pages[0].page.image_path = f"/data/{latin1}.png"
    run.pages[0].rows = _rows(latin1)
    run.pages.append(
        PageResult(
            page=PageSpec(lone, 0, 0, "omnidocbench", attributes={"data_source": lone}),
            error=f"{lone}: \x1b[31mbad",
            error_kind="input",
        )
    )
    return run


def test_undecodable_names_are_escaped_in_every_report(tmp_path):
    paths = write_reports(_odd_run(), tmp_path / "run")
    md, text_csv, text_json = (paths[k].read_text(encoding="utf-8") for k in ("markdown", "csv", "json"))
    for text in (md, text_csv, text_json.replace("\\\\", "\\")):
        assert "scan-\\xff" in text  # the file name's byte, shown as an escape
    assert "page-\\ud800" in md and "\\x1b[31m" in md  # no raw escape sequence reaches a terminal viewing the file
    doc = json.loads(text_json)
    assert [p["page"]["page_id"] for p in doc["pages"]] == ["scan-\\xff", "page-\\ud800"]
    assert {r["page_id"] for r in csv.DictReader(text_csv.splitlines())} == {"scan-\\xff"}


def test_undecodable_names_reach_a_strict_utf8_console(tmp_path):
    buf = io.BytesIO()
    stream = io.TextIOWrapper(buf, encoding="utf-8", errors="strict")
    print_summary(_odd_run(), Console(file=stream, width=200), {"markdown": tmp_path / "r" / "report.md"})
    stream.flush()
    out = buf.getvalue().decode("utf-8")
    assert "page-\\ud800: input: page-\\ud800: \\x1b[31mbad" in out


def test_a_writer_that_renames_first_makes_the_other_pick_the_next_name(tmp_path, monkeypatch):
    """Two writers with one run id: the loser's final rename meets a non-empty folder (ENOTEMPTY)."""
    real_rename = os.rename

    def other_writer_wins(src, dst):
        os.makedirs(dst)
        (Path(dst) / "report.md").write_text("the other run")
        real_rename(src, dst)  # ENOTEMPTY on Linux

    monkeypatch.setattr(writer_mod.os, "rename", other_writer_wins)
    with pytest.raises(ReportExistsError, match="appeared while writing"):
        write_reports(_run(), tmp_path / "run")
    assert sorted(os.listdir(tmp_path)) == ["run"]  # our staging folder is gone, theirs untouched
    assert (tmp_path / "run" / "report.md").read_text() == "the other run"


# ---- the comparison frame and what a reader sees ------------------------------------------------------


def _exact_run(n_crops: int = 6) -> RunResult:
    """Two pages whose gated rows are all exact (vendor == analytic)."""
    pages = []
    for pid in ("p1", "p2"):
        rows = [ComparisonRow(pid, s, p, "tensor_flops", 100.0, 100.0, 0.0, 0.0, 0.01, True) for s, p in leaf_paths()]
        page = _page(pid, rows=rows)
        page.workload = {**page.workload, "n_crops": n_crops, "w_crop": 1 if not n_crops else 2}
        pages.append(page)
    return RunResult("r2", "run_verify_end2end", {}, {}, pages, "2026-01-01T00:00:00", "2026-01-01T00:00:01", 1.0)


def test_frame_is_one_row_per_page_stage_part_metric_and_summaries_are_group_bys():
    from reports.frame import ALL_EQUAL, comparison_frame, leaf_summary

    run = _run(error=False)
    df = comparison_frame(run)
    assert len(df) == 2 * len(leaf_paths()) * len(METRICS)
    s = leaf_summary(df).set_index(["stage", "part", "metric"])
    clip = s.loc[("clip", "crops", "tensor_flops")]
    assert clip.failed == 1 and clip.passed == 1 and clip.worst_page == "bad" and clip.tolerance == 0.01
    # 2 pages x 1,000,000 vendor; analytic 1,000,000 + 1,050,000 (hand-made rows above)
    assert clip.vendor_total == 2_000_000 and clip.analytic_total == 2_050_000
    exact = leaf_summary(comparison_frame(_exact_run())).set_index(["stage", "part", "metric"])
    assert exact.loc[("sam", "global", "tensor_flops")].worst_page == ALL_EQUAL


def test_a_branch_that_did_not_run_is_not_run_not_a_pass():
    from reports.frame import comparison_frame, leaf_summary

    df = comparison_frame(_exact_run(n_crops=0))
    crops = df[(df.part == "crops")]
    assert set(crops.status) == {"not run"}
    s = leaf_summary(df).set_index(["stage", "part", "metric"]).loc[("sam", "crops", "tensor_flops")]
    assert (s.passed, s.failed, s.not_run, s.pages) == (0, 0, 2, 0)
    md = render_markdown(_exact_run(n_crops=0))
    assert "not run" in md


def test_console_shows_tolerance_exact_zero_totals_and_uncut_headers():
    stream = io.StringIO()
    print_summary(_exact_run(n_crops=0), Console(file=stream, width=80))
    out = stream.getvalue()
    assert "totals over 2 pages" in out
    for header in ("tolerance", "max rel Δ", "pass", "fail", "not run"):
        assert header in out, header  # never cut to 'fa…' at 80 columns
    assert "1.00%" in out and "0 (exact)" in out
    assert "not run" in out.splitlines()[-1] or "6 not run" in out  # the verdict counts skipped branches


def test_the_frame_and_its_summary_are_built_once_per_report(tmp_path, monkeypatch):
    """Every format is a view of one comparison frame and one leaf summary: none rebuilds them."""
    import reports.frame as frame_mod

    calls = {"comparison_frame": 0, "leaf_summary": 0}

    def counting(name: str):
        real = getattr(frame_mod, name)

        def counted(*args):
            calls[name] += 1
            return real(*args)

        return counted

    for name in calls:
        monkeypatch.setattr(frame_mod, name, counting(name))
    write_reports(_run(), tmp_path / "run")
    assert calls == {"comparison_frame": 1, "leaf_summary": 1}
    calls.update(dict.fromkeys(calls, 0))
    print_summary(_run(), Console(file=io.StringIO(), width=200))
    assert calls == {"comparison_frame": 1, "leaf_summary": 1}


def test_an_interrupt_inside_mkdtemp_leaves_no_staging_folder(tmp_path, monkeypatch):
    """A SIGINT/SIGTERM (a KeyboardInterrupt here) landing inside mkdtemp after it made the folder never hands the
    name back; the writer still removes the folder (its own prefix: this run's name and this process's pid)."""
    real = tempfile.mkdtemp

    def mkdtemp(**kwargs):
        real(**kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod.tempfile, "mkdtemp", mkdtemp)
    (tmp_path / f".run.partial-{os.getppid()}-keep").mkdir()  # another writer's staging is not ours to remove
    with pytest.raises(KeyboardInterrupt):
        write_reports(_run(), tmp_path / "run")
    assert [p.name for p in tmp_path.iterdir()] == [f".run.partial-{os.getppid()}-keep"]
