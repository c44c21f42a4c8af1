"""The HTML report: one self-contained file, verdict first, then a stage x metric grid of deltas, then where the
work and bytes go.

Charts (`reports.html_charts`) are matplotlib figures inlined as SVG; everything else is a table.  Every figure
is a group-by of the comparison frame and its leaf summary (`reports.frame.Comparison`), built once per report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from core.families import DEFAULT_FAMILY
from core.metrics import METRICS, PEAK_METRICS
from reports.format import format_metric, format_rel
from reports.frame import Comparison, failing, page_worst
from reports.html_charts import (
    CHART_METRIC,
    crop_grid,
    figure_html,
    metric_name,
    missing,
    page_chart,
    page_flops,
    share_chart,
)
from reports.length_charts import length_cells, length_chart, length_table
from reports.model import RunResult
from reports.safe import html_line as _e
from reports.safe import safe_text
from reports.summary import implementation_label, is_synthetic, verdict_line

MAX_FAILING_ROWS = 200  # the CSV has all of them
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
    return [*out, _table(["stage/part", *metrics], rows, kind="cost"), *figure_html(share_chart(run, df), 0)]


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
                "-" if missing(s.worst_page) else s.worst_page,
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
    flops = page_flops(df)
    skipped = _not_run(df)
    lengths = length_table(run, df)
    head = ["page", "status", "source", "size", "mode", "grid", "image tokens", "prefill len", "decode tokens"]
    head += ["decode share of io", "K/V at end", "vendor FLOPs", "analytic FLOPs", "worst rel delta", "not run"]
    head += ["cache"]
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
                crop_grid(w),
                ("num", w.get("n_image_tokens", "-")),
                ("num", w.get("prefill_len", "-")),
                ("num", w.get("decode_tokens", "-")),
                *(("num", cell) for cell in length_cells(lengths, p.page.page_id)),
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
    note = f"<p>FLOPs: {_e(metric_name(CHART_METRIC))} over every stage; failing pages first.</p>"
    charts = [*figure_html(page_chart(run, df), 1), *figure_html(length_chart(run, df), 2)]
    return ["<h2>Pages</h2>", *charts, note, _table(head, rows, classes)]


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
