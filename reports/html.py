"""The HTML report: one self-contained file, verdict first, then a stage x metric grid of deltas, then where the
work and bytes go.

Charts are matplotlib figures rendered to SVG and inlined (no JavaScript, no network, text kept as text);
everything else is a table.  Every figure is a group-by of the comparison frame and its leaf summary
(`reports.frame.Comparison`), built once per report.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from analytic.schema import DEFAULT_FAMILY, METRICS, PEAK_METRICS
from reports.format import axis_ticks, format_metric, format_rel
from reports.frame import Comparison, failing, page_worst
from reports.model import RunResult
from reports.safe import printable, safe_text
from reports.summary import implementation_label, is_synthetic, verdict_line

MAX_FAILING_ROWS = 200  # the CSV has all of them
MAX_PAGE_BARS = 40  # "where the cost goes": one bar per page up to this many, else one per mode
CHART_METRIC = "tensor_flops"  # the per-page charts total this metric
GRID_NOTE = (
    "The largest relative delta (analytic vs vendor) over the pages on which each branch ran. Green: within "
    "tolerance on every page; red: outside it on at least one (see Failures); grey: measured but not gated, "
    "'-' where there is no vendor count yet; 'not run': a branch no page has."
)
BREAKDOWN_NOTE = (
    "Analytic model totals over the pages (the model covers every stage, measured or not) and each leaf's share of "
    "its column's total, the largest in bold (unless tied); peak_bytes is the largest high-water mark, not a sum, "
    "so it has no share."
)
SYNTHETIC_NOTE = (
    "This run used the embedded page set: synthetic page geometries chosen to be representative "
    "of OmniDocBench's nine document types and to hit every crop-grid path. They are not pages of the real "
    "benchmark; use --omnidocbench ROOT for that."
)

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
VENDOR_COLOR, ANALYTIC_COLOR, FAIL_COLOR, MUTED = "#0072B2", "#E69F00", "#C0392B", "#6b6b6b"
STAGE_COLORS = {
    "sam": "#0072B2",
    "clip": "#E69F00",
    "qwen2_encoder": "#E69F00",  # DeepSeek-OCR 2's encoder takes CLIP's place (and colour): one family per run
    "projector": "#009E73",
    "prefill": "#CC79A7",
    "decode": "#D55E00",
}
_RC = {
    "svg.fonttype": "none",  # text stays text: small, selectable, searchable
    "text.parse_math": False,  # a '$' in a page id is a dollar sign, not TeX
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
}
_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_ID = re.compile(r' id="([^"]+)"')
_SVG_REF = re.compile(r'(?:url\(#|href="#)([^)"]+)')
_SVG_REF_SUB = re.compile(r'(url\(#|href="#)([^)"]+)')

_CSS = """
:root{--pass:#1e7b34;--fail:#c0392b;--warn:#9a6700;--line:#d8dde3;--muted:#5f6b76}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;color:#1f2328;margin:0 auto;
max-width:1240px;padding:20px 28px 60px}
h1{font-size:26px;margin:4px 0 6px}h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid var(--line);
padding-bottom:4px}
.verdict{padding:12px 16px;border-radius:6px;border-left:8px solid}
.verdict.PASS{background:#e9f6ec;border-color:var(--pass)}.verdict.FAIL,.verdict.INCOMPLETE{background:#fdecea;
border-color:var(--fail)}.verdict.ERROR{background:#fff5d6;border-color:var(--warn)}
.verdict p{margin:4px 0}.counts span{margin-right:18px;white-space:nowrap}
.note{background:#f3f0ff;border-left:4px solid #6f42c1;padding:8px 12px;margin:12px 0}
.meta{color:var(--muted)}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:8px 0 4px;font-size:12.5px}
td:first-child{white-space:nowrap}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7;vertical-align:bottom}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.fail td{background:#fdecea}td.fail{color:var(--fail);font-weight:600}td.pass{color:var(--pass)}
td.notrun{color:var(--muted);font-style:italic}
table.grid td.pass{background:#e9f6ec}table.grid td.fail{background:#fdecea}
table.grid td.notgated{background:#f1f3f5;color:var(--muted)}td.top{font-weight:700}
figure{margin:18px 0;border:1px solid var(--line);border-radius:6px;padding:8px}
figure svg{display:block;width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;border-radius:4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dt{font-weight:600}dd{margin:0}
details summary{cursor:pointer;color:var(--muted)}
""".strip()


def render_html(run: RunResult, comparison: Comparison | None = None) -> str:
    """The whole report as one HTML document that opens without a network."""
    comparison = Comparison.of(run) if comparison is None else comparison
    df, summary = comparison.frame, comparison.summary
    title = f"Verdict: {run.verdict} · {run.command} · {run.run_id}"
    body = [*_verdict(run, comparison), *_delta_grid(summary), *_breakdown(run, df, summary)]
    body += [*_failures(df), *_errors(run), *_stage_table(summary), *_pages(run, df), *_environment(run)]
    body += _config(run)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


# --- text ------------------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """One line of escaped text: odd characters shown as escapes, markup inert."""
    return html.escape(printable(str(value)))


def _short(text: Any, limit: int = 36) -> str:
    """A chart label: printable, and cut in the middle when long (the tables carry the full name)."""
    text = printable(str(text))
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit - limit // 2) :]


def _grid(w: dict[str, Any] | None) -> str:
    """'2x3' for a page cut into crops, 'none' for one without, '-' when there is no workload."""
    if not w:
        return "-"
    if _missing(w.get("n_crops")) or not w.get("n_crops"):
        return "none"
    return f"{_int(w.get('w_crop'))}x{_int(w.get('h_crop'))}"


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _table(
    head: Iterable[str], rows: Iterable[Iterable[Any]], row_classes: Iterable[str] | None = None, kind: str = ""
) -> str:
    """Cells are escaped here; a cell given as ('num', text) or ('fail', text) gets that class, the table `kind`."""
    table = f'<table class="{kind}">' if kind else "<table>"
    out = [f'<div class="scroll">{table}<thead><tr>', *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    classes = iter(row_classes or ())
    for row in rows:
        cls = next(classes, "")
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for cell in row:
            kind, text = cell if isinstance(cell, tuple) else ("", cell)
            out.append(f'<td class="{kind}">{_e(text)}</td>' if kind else f"<td>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# --- sections --------------------------------------------------------------------------------------------------------


def _verdict(run: RunResult, comparison: Comparison) -> list[str]:
    df, n = comparison.frame, len(run.pages)
    errors = sum(1 for p in run.pages if p.error)
    failed = sum(1 for p in run.pages if not p.error and not p.passed)
    counts = {"pages": n, "passed": n - errors - failed, "failed": failed, "could not be verified": errors}
    if not df.empty:
        status = df.status.value_counts()
        counts |= {f"gated checks {s}": int(status.get(s, 0)) for s in ("pass", "fail", "not run")}
    kind = run.verdict.split()[0]
    out = [
        f'<section class="verdict {_e(kind)}">',
        f"<h1>Verdict: {_e(run.verdict)}</h1>",
        f"<p>{_e(verdict_line(run, comparison))}</p>",
        '<p class="counts">' + "".join(f"<span>{_e(k)}: <b>{v}</b></span>" for k, v in counts.items()) + "</p>",
        "</section>",
    ]
    if is_synthetic(run):
        out.append(f'<p class="note"><b>Synthetic pages.</b> {_e(SYNTHETIC_NOTE)}</p>')
    model = run.config.get("model", DEFAULT_FAMILY)
    impl = implementation_label(run)
    impl = f" · {impl}" if impl else ""
    meta = f"Run {run.run_id} · {run.command} · model {model}{impl} · {n} pages · {run.wall_s:.1f} s"
    meta += f" · {run.started_at} → {run.finished_at}"
    out.append(f'<p class="meta">{_e(meta)}</p>')
    return out


def _failures(df: pd.DataFrame) -> list[str]:
    rows = failing(df)
    if rows.empty:
        return []
    head = ["page", "stage", "part", "metric", "vendor", "analytic", "analytic - vendor", "rel delta", "tolerance"]
    body = [
        [
            r.page_id,
            r.stage,
            r.part,
            r.metric,
            ("num", format_metric(r.metric, r.vendor)),
            ("num", format_metric(r.metric, r.analytic)),
            ("num", format_metric(r.metric, r.abs_delta)),
            ("fail", format_rel(r.rel_delta)),
            ("num", format_rel(r.tolerance)),
            r.gap_family or "-",
            r.note,
        ]
        for r in rows.head(MAX_FAILING_ROWS).itertuples()
    ]
    out = ["<h2>Failures (outside tolerance, worst first)</h2>", _table([*head, "gap family", "note"], body)]
    if len(rows) > MAX_FAILING_ROWS:
        out.append(f"<p>… and {len(rows) - MAX_FAILING_ROWS} more failing rows in report.csv</p>")
    return out


def _errors(run: RunResult) -> list[str]:
    errs = [p for p in run.pages if p.error]
    if not errs:
        return []
    body = "".join(
        f"<tr><td>{_e(p.page.page_id)}</td><td>{_e(p.error_kind or '-')}</td>"
        f"<td><pre>{html.escape(safe_text(p.error or ''))}</pre></td></tr>"
        for p in errs
    )
    head = '<div class="scroll"><table><thead><tr><th>page</th><th>kind</th><th>error</th></tr></thead><tbody>'
    return ["<h2>Pages that could not be verified</h2>", head + body + "</tbody></table></div>"]


def _delta_grid(summary: pd.DataFrame) -> list[str]:
    """Leaves x metrics, each cell the largest relative delta over pages, coloured by the gate: the whole comparison
    on one screen (failing cells are the Failures table's rows)."""
    out = ["<h2>Deltas per stage and metric</h2>"]
    if summary.empty:
        return [*out, "<p>No page was compared, so there is no delta to show.</p>"]
    metrics, cells = _metrics(summary), _cells(summary)
    rows = [[f"{st}/{pt}", *(_delta_cell(cells.get((st, pt, m))) for m in metrics)] for st, pt in _leaves(summary)]
    return [*out, f"<p>{_e(GRID_NOTE)}</p>", _table(["stage/part", *metrics], rows, kind="grid")]


def _metrics(summary: pd.DataFrame) -> list[str]:
    """The grid's columns: every metric of the schema, in its order, then any other the run has."""
    return [*METRICS, *(m for m in dict.fromkeys(summary.metric) if m not in METRICS)]


def _cells(summary: pd.DataFrame) -> dict[tuple[str, str, str], Any]:
    return {(s.stage, s.part, s.metric): s for s in summary.itertuples()}


def _leaves(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(stage, part) in report order (the summary's)."""
    return list(dict.fromkeys(zip(summary.stage, summary.part, strict=True)))


def _delta_cell(s: Any) -> tuple[str, str]:
    """(class, text) of one grid cell: 'pass'/'fail' for a gated leaf, 'notgated' for a reported one."""
    if s is None:
        return "num notgated", "-"
    if s.pages == 0:
        return "num notrun", "not run"
    kind = "notgated" if not s.gated else "fail" if s.failed else "pass"
    return f"num {kind}", format_rel(s.max_rel)


def _breakdown(run: RunResult, df: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Where the work and bytes go: each leaf's analytic totals and its share of the run's, then the share chart."""
    if summary.empty:
        return []
    present = set(summary.metric)
    metrics, cells = [m for m in _metrics(summary) if m in present], _cells(summary)
    totals = {m: float(summary[summary.metric == m].analytic_total.sum()) for m in metrics}
    tops = {m: _top(summary[summary.metric == m].analytic_total) for m in metrics}
    rows = [
        [f"{st}/{pt}", *(_cost_cell(cells.get((st, pt, m)), totals[m], tops[m]) for m in metrics)]
        for st, pt in _leaves(summary)
    ]
    out = ["<h2>Where the work and bytes go</h2>", f"<p>{_e(BREAKDOWN_NOTE)}</p>"]
    return [*out, _table(["stage/part", *metrics], rows, kind="cost"), *_chart(_share_chart(run, df), 0)]


def _top(totals: pd.Series) -> float | None:
    """The column's largest figure when one leaf alone has it (a tie, e.g. all equal, singles out nothing)."""
    top = totals.max()
    return float(top) if top > 0 and int((totals == top).sum()) == 1 else None


def _cost_cell(s: Any, total: float, top: float | None) -> tuple[str, str]:
    """'1.234 TFLOP · 42.0%' (a high-water mark has no share); the largest of its column in bold."""
    if s is None:
        return "num", "-"
    if s.pages == 0:
        return "num notrun", "not run"
    kind = "num top" if s.analytic_total == top else "num"
    value = format_metric(s.metric, s.analytic_total)
    if s.metric in PEAK_METRICS or not total or not s.analytic_total:
        return kind, value
    share = 100 * s.analytic_total / total
    return kind, f"{value} · {share:.1f}%" if share >= 0.05 else f"{value} · <0.1%"


def _stage_table(summary: pd.DataFrame) -> list[str]:
    if summary.empty:
        return []
    head = ["stage", "part", "metric", "pages", "vendor total", "analytic total", "tolerance", "max rel delta"]
    head += ["worst page", "pass", "fail", "not run"]

    def rows(frame: pd.DataFrame) -> list[list[Any]]:
        return [
            [
                s.stage,
                s.part,
                s.metric,
                ("num", s.pages),
                ("num", format_metric(s.metric, s.vendor_total)),
                ("num", format_metric(s.metric, s.analytic_total)),
                ("num", format_rel(s.tolerance)),
                ("fail" if s.failed else "num", "not run" if s.pages == 0 else format_rel(s.max_rel)),
                "-" if _missing(s.worst_page) else s.worst_page,
                ("num", s.passed),
                ("fail" if s.failed else "num", s.failed),
                ("notrun" if s.not_run else "num", s.not_run),
            ]
            for s in frame.itertuples()
        ]

    gated, reported = summary[summary.gated], summary[~summary.gated]
    out = ["<h2>Per stage</h2>", "<p>Totals over the pages on which the branch ran; tolerance gates each page.</p>"]
    out.append(_table(head, rows(gated), ("fail" if s.failed else "" for s in gated.itertuples())))
    if not reported.empty:
        out += [
            "<details><summary>Reported-only metrics (no vendor counterpart yet, not gated)</summary>",
            _table(head[:6], (r[:6] for r in rows(reported))),
            "</details>",
        ]
    return out


def _pages(run: RunResult, df: pd.DataFrame) -> list[str]:
    worst = page_worst(df)
    flops = _page_flops(df)
    skipped = _not_run(df)
    head = ["page", "status", "source", "size", "mode", "grid", "image tokens", "prefill len"]
    head += ["vendor FLOPs", "analytic FLOPs", "worst rel delta", "not run", "cache"]
    ordered = sorted(run.pages, key=lambda p: (p.passed, p.page.page_id))  # failures first
    rows, classes = [], []
    for p in ordered:
        w = p.workload or {}
        status = "PASS" if p.passed else (f"ERROR ({p.error_kind})" if p.error else "FAIL")
        source = p.page.source + (
            f": {p.page.attributes['data_source']}" if p.page.attributes.get("data_source") else ""
        )
        totals = flops.loc[p.page.page_id] if p.page.page_id in flops.index else None
        rows.append(
            [
                p.page.page_id,
                ("pass" if p.passed else "fail", status),
                source + (" (synthetic)" if p.page.synthetic else ""),
                ("num", f"{p.page.width}x{p.page.height}"),
                w.get("mode", "-"),
                _grid(w),
                ("num", w.get("n_image_tokens", "-")),
                ("num", w.get("prefill_len", "-")),
                (
                    "num",
                    "-" if totals is None else format_metric(CHART_METRIC, totals.vendor),
                ),
                ("num", "-" if totals is None else format_metric(CHART_METRIC, totals.analytic)),
                ("num", format_rel(worst.get(p.page.page_id))),
                ("notrun", skipped.get(p.page.page_id, "")),
                "hit" if p.cache_hit else "miss",
            ]
        )
        classes.append("" if p.passed else "fail")
    note = f"<p>FLOPs: {_e(_metric_name(CHART_METRIC))} over every stage; failing pages first.</p>"
    return ["<h2>Pages</h2>", *_chart(_page_chart(run, df), 1), note, _table(head, rows, classes)]


def _not_run(df: pd.DataFrame) -> dict[str, str]:
    """page_id -> the branches its workload does not have, e.g. 'crops' for a page without crops."""
    if df.empty:
        return {}
    rows = df[df.status == "not run"]
    return {pid: ", ".join(dict.fromkeys(g.part)) for pid, g in rows.groupby("page_id", sort=False)}


def _environment(run: RunResult) -> list[str]:
    env = run.environment or {}
    facts: list[tuple[str, Any]] = []
    cpu = env.get("cpu")
    if isinstance(cpu, dict):
        facts.append(("CPU", cpu.get("model", "?")))
        capability = [str(cpu.get("capability") or "?")]
        capability += [k for k in ("avx512_bf16", "amx", "onednn_bf16", "native_bf16") if cpu.get(k)]
        facts.append(("capability", ", ".join(capability)))
        facts.append(("cores / torch threads", f"{cpu.get('cores', '?')} / {cpu.get('torch_threads', '?')}"))
        if cpu.get("capped_by"):
            facts.append(("capped by", cpu["capped_by"]))
    choice = env.get("dtype_choice") or run.config.get("dtype_choice")
    if isinstance(choice, dict):
        facts.append(("dtype", f"{choice.get('dtype', '?')} (requested {choice.get('requested', '?')})"))
        facts.append(("why", choice.get("reason", "-")))
    elif run.config.get("dtype"):
        facts.append(("dtype", run.config["dtype"]))
    for key in ("execution", "cache"):
        if key in env:
            facts.append((key, env[key]))
    versions = dict(env.get("library_versions") or {})
    for key in ("python", "torch", "transformers"):
        if key in env and not isinstance(env[key], dict | list):
            versions.setdefault(key, env[key])
    if versions:
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    if env.get("platform"):
        facts.append(("platform", env["platform"]))
    out = ["<h2>Environment</h2>"]
    if facts:
        out.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>")
    return [*out, "<details><summary>everything recorded</summary>", _json_pre(env), "</details>"]


def _config(run: RunResult) -> list[str]:
    return ["<h2>Config</h2>", _json_pre(run.config)]


def _json_pre(data: Any) -> str:
    return f"<pre>{html.escape(safe_text(json.dumps(data, indent=2, sort_keys=True, default=str)))}</pre>"


# --- charts ----------------------------------------------------------------------------------------------------------


def _page_flops(df: pd.DataFrame) -> pd.DataFrame:
    """page_id -> vendor and analytic totals of CHART_METRIC over every stage, with the page's geometry.

    The vendor total is NaN when a stage has no vendor count (a partial sum would read as a gap)."""
    cols = ["vendor", "analytic", "n_image_tokens", "mode", "w_crop", "h_crop", "n_crops", "failed"]
    rows = df[df.metric == CHART_METRIC] if not df.empty else df
    if rows.empty:
        return pd.DataFrame(columns=cols)
    g = rows.groupby("page_id", sort=False)
    out = pd.DataFrame(
        {
            "vendor": g.vendor.sum(min_count=1).where(g.vendor.count() == g.size()),
            "analytic": g.analytic.sum(),
            "failed": g.status.agg(lambda s: bool((s == "fail").any())),
        }
    )
    first = g[["n_image_tokens", "mode", "w_crop", "h_crop", "n_crops"]].first()
    return out.join(first)[cols]


def _chart(made: tuple[Any, str, str] | None, index: int) -> list[str]:
    """A chart (figure, accessible name, caption) as a <figure>; [] when there was nothing to draw.
    `index` keeps each chart's SVG ids apart from the others'."""
    if made is None:
        return []
    fig, label, caption = made
    return [f"<figure>{_svg(fig, index, label)}<figcaption>{_e(caption)}</figcaption></figure>"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasSVG(fig)  # the SVG canvas, explicitly: no pyplot, no global backend
    return fig


def _svg(fig, index: int, label: str) -> str:
    """The figure as an inline <svg>: no XML prologue, no metadata, ids unique per chart, an accessible name."""
    import matplotlib as mpl

    buf = io.StringIO()
    meta = {"Creator": None, "Date": None, "Format": None, "Type": None}
    with mpl.rc_context({**_RC, "svg.hashsalt": f"dsocr-chart-{index}"}):
        fig.savefig(buf, format="svg", metadata=meta)
    svg = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", buf.getvalue(), count=1))
    return _scope_ids(svg, f"c{index}-").replace("<svg ", f'<svg role="img" aria-label="{_e(label)}" ', 1)


def _scope_ids(svg: str, prefix: str) -> str:
    """Ids unique in the page: drop the ones nothing references (matplotlib names every group), prefix the rest."""
    used = set(_SVG_REF.findall(svg))
    svg = _SVG_ID.sub(lambda m: f' id="{prefix}{m[1]}"' if m[1] in used else "", svg)
    return _SVG_REF_SUB.sub(lambda m: f"{m[1]}{prefix}{m[2]}", svg)


def _page_chart(run: RunResult, df: pd.DataFrame):
    """Total CHART_METRIC per page against its image tokens, vendor and analytic markers, crop grid labelled."""
    per_page = _page_flops(df).dropna(subset=["n_image_tokens"])
    if per_page.empty:
        return None
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    per_page = per_page.assign(grid=[_grid(r) for r in per_page[["w_crop", "h_crop", "n_crops"]].to_dict("records")])
    modes = sorted(m for m in per_page["mode"].dropna().unique() if m)
    with mpl.rc_context(_RC):
        width, height = 11, 5.2
        fig = _figure(width, height)
        ax = fig.subplots()
        x = per_page.n_image_tokens.astype(float)
        measured = per_page.vendor.notna()
        ax.scatter(
            x[measured],
            per_page.vendor[measured],
            s=90,
            facecolors="none",
            edgecolors=VENDOR_COLOR,
            linewidths=1.6,
            label="vendor (counted)",
            zorder=3,
        )
        ax.scatter(x, per_page.analytic, s=22, color=ANALYTIC_COLOR, marker="D", label="analytic model", zorder=4)
        bad = per_page[per_page.failed]
        if not bad.empty:
            ax.scatter(
                bad.n_image_tokens.astype(float),
                bad.analytic,
                s=220,
                facecolors="none",
                edgecolors=FAIL_COLOR,
                linewidths=1.8,
                label="page outside tolerance",
                zorder=5,
            )
        ax.set_xlabel("image tokens")
        ax.set_ylabel(f"{_metric_name(CHART_METRIC)} per page")
        ax.set_ylim(bottom=0, top=per_page[["vendor", "analytic"]].max().max() * 1.15)
        _round_ticks(ax, CHART_METRIC)
        span = max(x.max() - x.min(), 0.1 * x.max(), 1.0)  # pages of one size: a readable range around them
        ax.set_xlim(max(0.0, x.min() - 0.08 * span), x.max() + 0.12 * span)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens are whole: no '902.925' ticks
        _label_points(ax, per_page, len(modes) > 1, (width * 72 - 90, height * 72 - 70))
        ax.set_title(f"{_metric_name(CHART_METRIC)} by page ({_modes(modes)}), labelled with the crop grid")
        ax.grid(color="#e6e6e6", linewidth=0.6)
        ax.set_axisbelow(True)
        fig.legend(loc="outside upper right", ncols=3, frameon=False, fontsize=8.5)
    skipped = len(run.pages) - len(per_page)
    caption = f"One point per page: all stages summed ({len(per_page)} pages"
    caption += f"; {skipped} without results not shown)." if skipped else ")."
    caption += " Pages with the same image tokens and grid share one label."
    return fig, "FLOPs by page against image tokens", caption


def _label_points(ax, per_page: pd.DataFrame, with_mode: bool, size_pt: tuple[float, float]) -> None:
    """One label per distinct (image tokens, grid, mode): 'grid' or 'grid (n pages)'.

    Each goes to the first side of its point (right, left, above, below, then diagonals) where it covers no
    marker and no other label, estimated in points from the axes' limits and approximate size `size_pt`."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    w_pt, h_pt = size_pt

    def to_pt(x: float, y: float) -> tuple[float, float]:
        return (x - x0) / (x1 - x0) * w_pt, (y - y0) / (y1 - y0) * h_pt

    marks = [to_pt(x, y) for x, y in zip(per_page.n_image_tokens, per_page.analytic, strict=True)]
    taken = [(px - 6, py - 6, px + 6, py + 6) for px, py in marks]
    sides = [(7, 0, "left"), (-7, 0, "right"), (0, 12, "center"), (0, -13, "center")]
    sides += [(7, 13, "left"), (7, -14, "left"), (-7, 13, "right"), (-7, -14, "right")]
    groups = per_page.groupby(["n_image_tokens", "grid", "mode"], sort=True, dropna=False)
    for (tokens, grid, mode), g in groups:
        y = float(g.analytic.max())
        text = f"{mode} {grid}" if with_mode and mode else str(grid)
        text += f" ({len(g)} pages)" if len(g) > 1 else ""
        px, py = to_pt(float(tokens), y)
        width = 5.0 * len(text)
        for dx, dy, ha in sides:
            left = {"left": px + dx, "right": px + dx - width, "center": px - width / 2}[ha]
            box = (left, py + dy - 5, left + width, py + dy + 5)
            inside = box[0] >= 0 and box[2] <= w_pt and box[1] >= 0 and box[3] <= h_pt
            if inside and not any(_overlap(box, other) for other in taken):
                break
        else:
            dx, dy, ha = sides[0]
            box = (px + dx, py - 5, px + dx + width, py + 5)
        taken.append(box)
        ax.annotate(text, (float(tokens), y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=ha,
                    va="center", color="#333333")  # fmt: skip


def _modes(modes: list[str]) -> str:
    """'mode gundam' or 'modes base, gundam': the title says which mode(s) the chart covers."""
    return f"mode{'s' if len(modes) > 1 else ''} {', '.join(_short(m, 20) for m in modes) or '-'}"


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _round_ticks(ax, metric: str) -> None:
    """y ticks at round values of the one unit the reports show the axis's top in (`reports.format.axis_ticks`)."""
    low, high = ax.get_ylim()
    ticks = axis_ticks(metric, low, high)
    ax.set_yticks([value for value, _ in ticks], [label for _, label in ticks])


def _metric_name(metric: str) -> str:
    """'tensor_flops' -> 'tensor FLOPs', 'io_bytes' -> 'io bytes'."""
    return metric.replace("_flops", " FLOPs").replace("_", " ")


def _share_chart(run: RunResult, df: pd.DataFrame):
    """Where the analytic CHART_METRIC goes: a 100% stacked bar per page (or per mode for many pages)."""
    rows = df[df.metric == CHART_METRIC]
    if rows.empty or rows.analytic.sum() <= 0:
        return None
    import matplotlib as mpl

    by_page = len(rows.page_id.unique()) <= MAX_PAGE_BARS
    stages = [s for s in STAGE_COLORS if s in set(rows.stage)] + sorted(set(rows.stage) - set(STAGE_COLORS))
    if by_page:
        table = rows.pivot_table(index="page_id", columns="stage", values="analytic", aggfunc="sum", sort=False)
        info = rows.groupby("page_id", sort=False)[["mode", "w_crop", "h_crop", "n_crops"]].first()
        labels = [f"{_short(pid)} · {_grid(info.loc[pid].to_dict())}" for pid in table.index]
    else:
        table = rows.pivot_table(index="mode", columns="stage", values="analytic", aggfunc="sum", sort=False)
        counts = rows.groupby("mode", sort=False).page_id.nunique()
        labels = [f"{_short(mode or '-')} ({counts[mode]} pages)" for mode in table.index]
    table = table.reindex(columns=stages).fillna(0.0)
    totals = table.sum(axis=1).replace(0, math.nan)
    shares = table.div(totals, axis=0).fillna(0.0) * 100
    modes = sorted(m for m in rows["mode"].dropna().unique() if m)
    with mpl.rc_context(_RC):
        fig = _figure(11, 1.3 + 0.3 * len(table))
        ax = fig.subplots()
        y = list(range(len(table)))
        left = [0.0] * len(table)
        for stage in stages:
            widths = list(shares[stage])
            ax.barh(
                y,
                widths,
                left=left,
                height=0.72,
                color=STAGE_COLORS.get(stage, MUTED),
                label=stage,
                edgecolor="white",
                linewidth=0.5,
            )
            for i, (w, start) in enumerate(zip(widths, left, strict=True)):
                if w >= 6:
                    ax.text(start + w / 2, i, f"{w:.0f}%", ha="center", va="center", fontsize=7.5, color="white")
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for i, total in enumerate(table.sum(axis=1)):
            ax.text(101, i, format_metric(CHART_METRIC, total), va="center", fontsize=7.5, color="#333333")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 112)
        ax.set_xticks([0, 25, 50, 75, 100], ["0%", "25%", "50%", "75%", "100%"])
        ax.set_xlabel(f"share of the analytic {_metric_name(CHART_METRIC)} (total at the right)")
        unit = "page" if by_page else "mode"
        ax.set_title(f"Where the cost goes, per {unit} ({_modes(modes)})")
        fig.legend(loc="outside upper right", ncols=len(stages), frameon=False, fontsize=8.5)
    caption = f"Share of total {_metric_name(CHART_METRIC)} by stage ({', '.join(stages)}; branches summed), "
    caption += "from the analytic model, which covers every stage" + (
        "." if by_page else "; totals over each mode's pages."
    )
    return fig, "Where the cost goes, by stage", caption
