"""report.html: self-contained, verdict then the delta grid then the cost breakdown, charts inline as SVG with round
axis ticks, text escaped, and it renders in a real browser."""

from __future__ import annotations

import ast
import html
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from core.metrics import METRICS
from core.schema import leaf_paths
from reports import REPORT_FILES, write_reports
from reports import writer as writer_mod
from reports.format import axis_ticks
from reports.html import render_html
from reports.model import ComparisonRow, PageResult, PageSpec, RunResult

HOSTILE = "<script>alert(1)</script>"
ODD = "scan-\udcff $1$ & \x07"  # a file name that is not UTF-8, a '$' (no TeX), an ampersand, a control character
N_CHARTS = 2  # where the cost goes (per page, by stage); tensor FLOPs by page
MAX_FUNCTION_LINES = 60
SIZE_BOUND = 400_000  # bytes, for 16 pages
CHART_COLORS = {"vendor": (0x00, 0x72, 0xB2), "analytic": (0xE6, 0x9F, 0x00)}
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# per (stage, part): tensor FLOPs of a 2x3 gundam page; crops are 0 on a page without crops
_FLOPS = {
    ("sam", "global"): 9.77e11,
    ("sam", "crops"): 1.95e12,
    ("clip", "global"): 1.62e11,
    ("clip", "crops"): 2.48e11,
    ("projector", "global"): 1.34e9,
    ("projector", "crops"): 2.1e9,
    ("prefill", "decoder"): 6.1e11,
    ("prefill", "lm_head"): 3.3e8,
    ("decode", "decoder"): 1.7e9,
    ("decode", "lm_head"): 6.6e8,
}


def _rows(page_id: str, crops: bool, off: float = 0.0) -> list[ComparisonRow]:
    """Gated tensor FLOPs for every leaf (analytic off by `off` on clip/global), one reported-only metric."""
    rows = []
    for stage, part in leaf_paths():
        vendor = (
            _FLOPS[(stage, part)] * (2 if stage in ("prefill", "decode") else 1) if crops or part != "crops" else 0.0
        )
        analytic = vendor * (1 + off) if (stage, part) == ("clip", "global") else vendor
        rel = abs(analytic - vendor) / vendor if vendor else 0.0
        ok = rel <= 0.01
        gap = None if ok else "mm"
        rows.append(
            ComparisonRow(page_id, stage, part, "tensor_flops", vendor, analytic, analytic - vendor, rel, 0.01, ok, gap)
        )
        rows.append(ComparisonRow(page_id, stage, part, "io_bytes", None, 1e6, None, None, None, None))
    return rows


def _page(page_id: str, crops: bool = True, off: float = 0.0, grid: tuple[int, int] = (2, 3)) -> PageResult:
    spec = PageSpec(page_id, 1654, 2339, "embedded", synthetic=True, attributes={"data_source": "book"})
    n = grid[0] * grid[1] if crops else 0
    tokens = 273 + ((10 * grid[0] + 1) * 10 * grid[1] if crops else 0)
    workload = {"mode": "gundam", "w_crop": grid[0], "h_crop": grid[1], "n_crops": n, "n_image_tokens": tokens}
    workload["prefill_len"] = tokens + 13
    return PageResult(page=spec, workload=workload, rows=_rows(page_id, crops, off))


def _run(pages: list[PageResult]) -> RunResult:
    env = {
        "torch": "2.13.0",
        "cpu": {"model": "Test CPU 9000", "capability": "AVX2", "cores": 2, "torch_threads": 2},
        "dtype_choice": {"requested": "auto", "dtype": "float32", "reason": "no native bf16 on AVX2"},
        "library_versions": {"torch": "2.13.0", "transformers": "5.0"},
    }
    config = {"mode": "gundam", "output_dir": "/tmp/<b>out</b>"}
    return RunResult("r1", "run_verify_end2end", config, env, pages, "2026-01-01T00:00", "2026-01-01T00:01", 60.0)


def _sixteen() -> RunResult:
    grids = [(2, 3), (3, 2), (1, 2), (2, 2), (3, 3), (2, 4), (4, 2), (1, 3)]
    pages = [_page(f"page-{i:02d}", grid=grids[i % len(grids)]) for i in range(13)]
    pages.append(_page(HOSTILE, crops=False))
    pages.append(_page(ODD, off=0.05))  # outside tolerance: a failing row
    pages.append(
        PageResult(page=PageSpec("broken", 0, 0, "embedded", synthetic=True), error="x\ny", error_kind="input")
    )
    return _run(pages)


@pytest.fixture(scope="module")
def report() -> str:
    return render_html(_sixteen())


def _svgs(text: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", text, re.S)


def test_self_contained(report):
    assert report.startswith("<!DOCTYPE html>")
    # nothing is fetched: no remote src/href/url(), no script, no stylesheet link, no web font
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", report, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//|@import|<link\b|<script\b|<iframe\b", report, re.I)
    # the only URLs left are the SVG namespace names, which browsers never fetch
    assert set(re.findall(r"https?://[^\s\"'<>]+", report)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }


def test_charts_inline_svg_text_as_text(report):
    svgs = _svgs(report)
    assert len(svgs) == N_CHARTS
    assert "<?xml" not in report and "<!DOCTYPE svg" not in report and "<metadata>" not in report
    for svg in svgs:
        assert 'role="img"' in svg and "<text" in svg  # svg.fonttype none: labels are text, not glyph paths
    ids = re.findall(r'\bid="([^"]+)"', report)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline charts"
    share, pages = svgs
    assert "2x3" in pages and "none" in pages and "Where the cost goes" in share
    assert "mode gundam" in share


def test_verdict_then_grid_then_breakdown_then_failures_worst_first(report):
    body = report[report.index("<body>") :]
    order = ["Verdict: FAIL", "<h2>Deltas per stage and metric", "<h2>Where the work and bytes go", "<svg"]
    order += ["<h2>Failures", "<h2>Per stage", "<h2>Pages</h2>"]
    at = [body.index(text) for text in order]
    assert at == sorted(at), dict(zip(order, at, strict=True))
    failures = body[body.index("<h2>Failures") : body.index("</table>", body.index("<h2>Failures"))]
    assert "clip" in failures and "5.00%" in failures and "page-00" not in failures
    assert "Synthetic pages" in body
    stages = body[body.index("<h2>Per stage") : body.index("<h2>Pages</h2>")]
    assert "0 (exact)" in stages and "all equal" in stages  # exact ties are said so, not pinned on the first page


def test_hostile_text_escaped(report):
    assert HOSTILE not in report and "<script" not in report.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "<b>out</b>" not in report  # config values are text too
    assert "\udcff" not in report and "\x07" not in report
    assert "scan-\\xff $1$ &amp;" in report  # shown, as escapes, in the tables and the charts
    report.encode("utf-8")  # every character encodes


def test_not_run_for_crops_of_a_page_without_crops(report):
    pages_table = report[report.index("<h2>Pages</h2>") :]
    row = next(r for r in pages_table.split("<tr") if "&lt;script&gt;" in r)
    assert ">none<" in row and '<td class="notrun">crops</td>' in row
    only = render_html(_run([_page("flat", crops=False)]))
    head, rows = _grid(only)
    crops = [r for r in rows if r[0][1].endswith("/crops")]
    assert [r[0][1] for r in crops] == ["sam/crops", "clip/crops", "projector/crops"]
    for row in crops:  # gated tensor FLOPs: not run (not a 0 pass); io_bytes: reported, no vendor count
        cells = dict(zip(head, row, strict=True))
        assert cells["tensor_flops"] == ("num notrun", "not run") and cells["io_bytes"] == ("num notgated", "-")
    table = only[only.index("<h2>Per stage") : only.index("<h2>Pages</h2>")]
    crops = [r for r in table.split("<tr") if ">crops<" in r and "tensor_flops" in r]
    assert len(crops) == 3 and all("not run" in r for r in crops)


def _section_table(text: str, heading: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """The first table after `heading`: its header cells and, per row, (class, text) of each cell."""
    start = text.index(f"<h2>{heading}</h2>")
    table = text[text.index("<table", start) : text.index("</table>", start)]
    head = re.findall(r"<th>(.*?)</th>", table)
    body = table[table.index("<tbody>") :]
    cells = (re.findall(r'<td(?: class="([^"]*)")?>(.*?)</td>', r) for r in body.split("<tr")[1:])
    rows = [[(cls, html.unescape(text)) for cls, text in row] for row in cells]
    return head, rows


def _grid(text: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
    return _section_table(text, "Deltas per stage and metric")


def test_grid_one_row_per_leaf_one_column_per_metric(report):
    head, rows = _grid(report)
    assert head == ["stage/part", *METRICS]
    assert [r[0][1] for r in rows] == [f"{s}/{p}" for s, p in leaf_paths()]  # report order
    assert all(len(r) == 1 + len(METRICS) for r in rows)
    cells = {r[0][1]: dict(zip(head, r, strict=True)) for r in rows}
    # the one failing leaf: clip/global tensor FLOPs, the ODD page's analytic 5% over its vendor count
    assert cells["clip/global"]["tensor_flops"] == ("num fail", "5.00%")
    failing = [(leaf, m) for leaf, c in cells.items() for m, (cls, _) in c.items() if "fail" in cls.split()]
    assert failing == [("clip/global", "tensor_flops")]
    assert cells["sam/crops"]["tensor_flops"] == ("num pass", "0 (exact)")  # a page without crops is not a fail
    assert cells["sam/global"]["io_bytes"] == ("num notgated", "-")  # reported only, no vendor count
    assert cells["sam/global"]["peak_bytes"] == ("num notgated", "-")  # a metric this run does not have
    assert '<table class="grid">' in report and "table.grid td.fail{" in report  # the classes are styled


def test_breakdown_shares_of_each_metric():
    text = render_html(_run([_page("one")]))
    head, rows = _section_table(text, "Where the work and bytes go")
    assert head == ["stage/part", "tensor_flops", "io_bytes"]  # the metrics the run has
    cells = {r[0][1]: dict(zip(head, r, strict=True)) for r in rows}
    # tensor FLOPs of the page (_FLOPS, prefill and decode doubled): 0.977 + 1.95 + 0.162 + 0.248 + 0.00134
    # + 0.0021 + 2 * (0.61 + 0.00033) + 2 * (0.0017 + 0.00066) = 4.56582 TFLOP; sam/crops 1.95 / 4.56582 = 42.7%
    assert cells["sam/crops"]["tensor_flops"] == ("num top", "1.950 TFLOP · 42.7%")
    assert cells["clip/global"]["tensor_flops"] == ("num", "162.000 GFLOP · 3.5%")  # 0.162 / 4.56582
    assert cells["prefill/lm_head"]["tensor_flops"] == ("num", "660.000 MFLOP · <0.1%")  # 6.6e8 / 4.56582e12
    # io_bytes: 1e6 on each of the 10 leaves, 1e6 / 2**10 = 976.5625 KiB, a tenth each (tied: none in bold)
    assert {c["io_bytes"] for c in cells.values()} == {("num", "976.562 KiB · 10.0%")}


@pytest.mark.parametrize(
    ("metric", "low", "high", "expected"),
    [
        # 1e12 B = 931.3 GiB (< 2**40): GiB; a fifth is 186.3 GiB, rounded up to 200 GiB
        ("io_bytes", 0, 1e12, [(0, "0"), *((k * 2**30, f"{k} GiB") for k in (200, 400, 600, 800))]),
        # 1e13 B = 9.09 TiB: TiB; a fifth is 1.82 TiB -> 2 TiB
        ("peak_bytes", 0, 1e13, [(0, "0"), *((k * 2**40, f"{k} TiB") for k in (2, 4, 6, 8))]),
        # 3.3 TFLOP: a fifth is 0.66 TFLOP -> 1 TFLOP
        ("tensor_flops", 0, 3.3e12, [(0, "0"), *((k * 1e12, f"{k} TFLOP") for k in (1, 2, 3))]),
        # 1.5 to 2.6 GFLOP: a fifth of 1.1 is 0.22 -> 0.5 GFLOP, from the first multiple at or above 1.5
        ("tensor_flops", 1.5e9, 2.6e9, [(1.5e9, "1.5 GFLOP"), (2e9, "2 GFLOP"), (2.5e9, "2.5 GFLOP")]),
        ("io_bytes", 0, 500, [(0, "0"), *((k, f"{k} B") for k in (100, 200, 300, 400, 500))]),  # exact steps of 100
    ],
)
def test_axis_ticks_are_round_values_of_the_unit_shown(metric, low, high, expected):
    ticks = axis_ticks(metric, low, high)
    assert [label for _, label in ticks] == [label for _, label in expected]
    assert [v for v, _ in ticks] == pytest.approx([v for v, _ in expected], rel=1e-12)


def test_chart_ticks_are_round(report):
    _, pages = _svgs(report)
    labels = re.findall(r">([^<>]*FLOP)</text>", pages)
    assert labels and all(re.fullmatch(r"0|\d+ [kMGTP]?FLOP", label) for label in labels), labels


@pytest.mark.parametrize("module", ["html.py", "html_charts.py"])
def test_html_functions_are_short(module):
    path = os.path.join(os.path.dirname(__file__), "..", "reports", module)
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {k: v for k, v in long.items() if v > MAX_FUNCTION_LINES} == {}


def test_environment_and_config(report):
    env = report[report.index("<h2>Environment") :]
    assert "Test CPU 9000" in env and "AVX2" in env and "no native bf16 on AVX2" in env and "transformers 5.0" in env
    assert "&lt;b&gt;out&lt;/b&gt;" in env


def test_size_bound(report):
    assert len(report.encode("utf-8")) < SIZE_BOUND


def test_written_with_the_other_reports_atomically(tmp_path, monkeypatch):
    run = _run([_page("one")])
    paths = write_reports(run, tmp_path / "run")
    assert REPORT_FILES["html"] == "report.html" and paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE")

    def boom(_run, *_):
        raise RuntimeError("crash while charting")

    monkeypatch.setattr(writer_mod, "render_html", boom)
    with pytest.raises(RuntimeError, match="charting"):
        write_reports(run, tmp_path / "run2")
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no half-written report next to it


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _chromium(browser: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += ["--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180, check=False)


def test_renders_in_headless_chromium(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}): apt-get install chromium")
    from PIL import Image

    html_path = write_reports(_sixteen(), tmp_path / "run")["html"]
    url = html_path.resolve().as_uri()

    dom = _chromium(browser, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(_svgs(dom.stdout)) == N_CHARTS, "the charts are not in the rendered DOM"
    assert "Verdict: FAIL" in dom.stdout and "<script" not in dom.stdout.lower()

    shot = tmp_path / "shot.png"
    out = _chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    charts = image.crop((0, 300, 1280, 2400))  # below the verdict: the charts start here
    pixels = np.asarray(charts, dtype=np.int16).reshape(-1, 3)
    non_white = int((pixels.min(axis=1) < 235).sum())
    assert non_white > 0.05 * len(pixels), "the page rendered (nearly) blank"
    assert len(np.unique(pixels, axis=0)) > 200, "too few colours for charts"
    for name, rgb in CHART_COLORS.items():  # the bars and markers were painted, in the chart colours
        near = int((np.abs(pixels - np.array(rgb)).max(axis=1) <= 12).sum())
        assert near > 2000, f"hardly any {name}-coloured pixels ({near}): the SVG charts did not render"


def _decoding_page(page_id: str, k: int, kv: list[int]) -> PageResult:
    """A page with k decode steps: io bytes 100 per vision/prefill leaf, 10 per decode step's decoder (analytic)."""
    p = _page(page_id)
    p.workload = {**(p.workload or {}), "decode_tokens": k}
    rows = [r for r in p.rows if r.metric == "tensor_flops"]
    for stage, part in leaf_paths():
        io = 10.0 * k if (stage, part) == ("decode", "decoder") else (0.0 if stage == "decode" else 100.0)
        rows.append(ComparisonRow(page_id, stage, part, "io_bytes", io, io, 0.0, 0.0, 0.01, True))
    p.rows = rows
    steps = [{"decoder": {"io_bytes": 10}, "lm_head": {"io_bytes": 0}} for _ in range(k)]
    p.analytic = {"stages": {"decode": {"steps": steps}}, "memory": {"kv_cache_resident_bytes": kv}}
    p.trace = {"memory": {"kv_cache_resident_bytes": kv}}
    return p


def test_length_chart_decode_share_and_kv_at_the_end_by_hand():
    from reports.frame import Comparison
    from reports.length_charts import length_chart, length_table

    run = _run([_decoding_page("long", 30, [1000, 1010, 1020]), _page("vision-only-like")])
    df = Comparison.of(run).frame
    table = length_table(run, df)
    assert list(table.index) == ["long"]  # a page without decode steps has no point
    # 8 vision/prefill leaves of 100 (crops included: the page has 2 x 3 crops) + decode 30 x 10 = 300 + lm_head 0
    n_leaves = sum(1 for s, _ in leaf_paths() if s != "decode")
    assert table.loc["long", "decode_share_io_bytes"] == pytest.approx(100 * 300 / (100 * n_leaves + 300))
    assert table.loc["long", "kv_end_vendor"] == table.loc["long", "kv_end_analytic"] == 1020
    fig, label, caption = length_chart(run, df)
    assert label == "Cost against output length" and "verified at 30 output tokens" in caption
    assert len(fig.axes) == 3
    body = render_html(run)
    assert body.count("<figure>") == N_CHARTS + 1
    share = f"{100 * 300 / (100 * n_leaves + 300):.0f}%"
    assert f'<td class="num">{share}</td><td class="num">1020 B</td>' in body  # the page table's two cells
