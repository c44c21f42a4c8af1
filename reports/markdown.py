"""The markdown report: verdict first, then failures, then detail a reader drills into."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from core.families import DEFAULT_FAMILY
from reports.format import format_metric, format_rel
from reports.frame import Comparison, failing, page_worst
from reports.length_charts import length_cells, length_table
from reports.model import PageResult, RunResult
from reports.summary import implementation_label, is_synthetic, verdict_line

MAX_FAILING_ROWS = 200  # the CSV has all of them

SYNTHETIC_NOTE = (
    "> **Synthetic pages.** This run used the embedded page set: synthetic page geometries chosen to be "
    "representative of OmniDocBench's nine document types and to hit every crop-grid path. They are not "
    "pages of the real benchmark; use `--omnidocbench ROOT` for that."
)


def render_markdown(run: RunResult, comparison: Comparison | None = None) -> str:
    comparison = Comparison.of(run) if comparison is None else comparison
    df, summary = comparison.frame, comparison.summary
    out = [f"# Verdict: {run.verdict}", "", verdict_line(run, comparison), ""]
    if is_synthetic(run):
        out += [SYNTHETIC_NOTE, ""]
    model = run.config.get("model", DEFAULT_FAMILY)
    impl = implementation_label(run)
    impl = f" · {impl}" if impl else ""
    out += [
        f"Run `{run.run_id}` · `{run.command}` · model `{model}`{impl} · {len(run.pages)} pages · {run.wall_s:.1f} s",
        "",
    ]
    out += _failures(df) + _errors(run)
    out += _gated_table(summary) + _branch_detail(summary) + _pages(run, page_worst(df), length_table(run, df))
    out += _json_block("Environment", run.environment) + _json_block("Config", run.config)
    return "\n".join(out).rstrip() + "\n"


def _failures(df: pd.DataFrame) -> list[str]:
    rows = failing(df)
    if rows.empty:
        return []
    head = ["page", "stage", "part", "metric", "vendor", "analytic", "analytic - vendor", "rel delta", "tolerance"]
    body = [_failing_cells(r) for r in rows.head(MAX_FAILING_ROWS).itertuples()]
    out = ["## Failures (outside tolerance, worst first)", ""]
    out += _table([*head, "gap family", "note"], body)
    if len(rows) > MAX_FAILING_ROWS:
        out += [f"... and {len(rows) - MAX_FAILING_ROWS} more failing rows in report.csv", ""]
    return out


def _failing_cells(r) -> list[str]:
    return [
        r.page_id,
        r.stage,
        r.part,
        r.metric,
        format_metric(r.metric, r.vendor),
        format_metric(r.metric, r.analytic),
        format_metric(r.metric, r.abs_delta),
        format_rel(r.rel_delta),
        format_rel(r.tolerance),
        r.gap_family or "-",
        r.note,
    ]


def _errors(run: RunResult) -> list[str]:
    errs = [p for p in run.pages if p.error]
    if not errs:
        return []
    out = ["## Pages that could not be verified", ""]
    return out + _table(["page", "kind", "error"], [[p.page.page_id, p.error_kind or "-", p.error] for p in errs])


def _gated_table(summary: pd.DataFrame) -> list[str]:
    gated = summary[summary.gated] if not summary.empty else summary
    if gated.empty:
        return []
    head = ["stage", "part", "metric", "pages", "vendor total", "analytic total", "tolerance", "max rel delta"]
    head += ["worst page", "pass", "fail", "not run"]
    body = [
        [
            s.stage,
            s.part,
            s.metric,
            str(s.pages),
            format_metric(s.metric, s.vendor_total),
            format_metric(s.metric, s.analytic_total),
            format_rel(s.tolerance),
            format_rel(s.max_rel),
            s.worst_page or "-",
            str(s.passed),
            str(s.failed),
            str(s.not_run),
        ]
        for s in gated.itertuples()
    ]
    return ["## Gated stages", "", *_table(head, body)]


def _branch_detail(summary: pd.DataFrame) -> list[str]:
    """Each stage's parts side by side (global vs crops, decoder vs lm_head), every metric, totals over pages."""
    if summary.empty:
        return []
    out = ["## Per-branch detail", "", "Totals over pages, vendor / analytic; `-`: no measured counterpart yet.", ""]
    for stage, by_stage in summary.groupby("stage", sort=False):
        parts = list(dict.fromkeys(by_stage.part))
        body = []
        for metric, rows in by_stage.groupby("metric", sort=False):
            cells = {r.part: _pair(r) for r in rows.itertuples()}
            body.append([metric, *(cells.get(p, "-") for p in parts)])
        out += [f"### {stage}", "", *_table(["metric", *parts], body)]
    return out


def _pair(s) -> str:
    analytic = format_metric(s.metric, s.analytic_total)
    if s.pages == 0:
        return "not run"
    if s.vendor_total is None or s.vendor_total != s.vendor_total:  # None or NaN: not measured
        return f"- / {analytic}"
    return f"{format_metric(s.metric, s.vendor_total)} / {analytic} ({format_rel(s.max_rel)} max)"


def _pages(run: RunResult, worst: pd.Series, lengths: pd.DataFrame) -> list[str]:
    head = ["page", "status", "source", "size", "grid", "image tokens", "prefill len", "decode tokens"]
    head += ["decode share of io", "K/V at end", "worst rel delta", "cache"]
    ordered = sorted(run.pages, key=lambda p: (p.passed, p.page.page_id))  # failures first
    rows = [_page_cells(p, worst.get(p.page.page_id), length_cells(lengths, p.page.page_id)) for p in ordered]
    return ["## Pages", "", *_table(head, rows)]


def _page_cells(p: PageResult, worst: float | None, length: tuple[str, str]) -> list[str]:
    w = p.workload or {}
    status = "PASS" if p.passed else (f"ERROR ({p.error_kind})" if p.error else "FAIL")
    source = p.page.source + (f": {p.page.attributes['data_source']}" if p.page.attributes.get("data_source") else "")
    grid = f"{w['w_crop']}x{w['h_crop']}" if w.get("n_crops") else ("none" if w else "-")
    return [
        p.page.page_id,
        status,
        source + (" (synthetic)" if p.page.synthetic else ""),
        f"{p.page.width}x{p.page.height}",
        grid,
        str(w.get("n_image_tokens", "-")),
        str(w.get("prefill_len", "-")),
        str(w.get("decode_tokens", "-")),
        *length,
        format_rel(worst) if worst is not None and worst == worst else "-",
        "hit" if p.cache_hit else "miss",
    ]


def _json_block(title: str, data: Any) -> list[str]:
    return [f"## {title}", "", "```json", json.dumps(data, indent=2, sort_keys=True, default=str), "```", ""]


def _table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head), *(line(r) for r in rows), ""]
