"""The markdown report: verdict first, then failures, then detail a reader drills into."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reports.format import format_metric, format_rel
from reports.summary import LeafSummary, failing_rows, is_synthetic, summarize, verdict_line
from verify.model import ComparisonRow, PageResult, RunResult

MAX_FAILING_ROWS = 200  # the CSV has all of them

SYNTHETIC_NOTE = (
    "> **Synthetic pages.** This run used the embedded page set: synthetic page geometries chosen to be "
    "representative of OmniDocBench's nine document types and to hit every crop-grid path. They are not "
    "pages of the real benchmark; use `--omnidocbench ROOT` for that."
)


def render_markdown(run: RunResult) -> str:
    summary = summarize(run)
    out = [f"# Verdict: {run.verdict}", "", verdict_line(run), ""]
    if is_synthetic(run):
        out += [SYNTHETIC_NOTE, ""]
    out += [f"Run `{run.run_id}` · `{run.command}` · {len(run.pages)} pages · {run.wall_s:.1f} s", ""]
    out += _failures(run) + _errors(run)
    out += _gated_table(summary) + _branch_detail(summary) + _pages(run)
    out += _json_block("Environment", run.environment) + _json_block("Config", run.config)
    return "\n".join(out).rstrip() + "\n"


def _failures(run: RunResult) -> list[str]:
    rows = failing_rows(run)
    if not rows:
        return []
    head = ["page", "stage", "part", "metric", "vendor", "analytic", "analytic - vendor", "rel delta", "tolerance"]
    body = [_failing_cells(r) for r in rows[:MAX_FAILING_ROWS]]
    out = ["## Failures (outside tolerance, worst first)", ""]
    out += _table([*head, "gap family", "note"], body)
    if len(rows) > MAX_FAILING_ROWS:
        out += [f"... and {len(rows) - MAX_FAILING_ROWS} more failing rows in report.csv", ""]
    return out


def _failing_cells(r: ComparisonRow) -> list[str]:
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


def _gated_table(summary: list[LeafSummary]) -> list[str]:
    gated = [s for s in summary if s.gated]
    if not gated:
        return []
    head = ["stage", "part", "metric", "pages", "vendor total", "analytic total", "max rel delta", "worst page"]
    body = [
        [
            s.stage,
            s.part,
            s.metric,
            str(s.pages),
            format_metric(s.metric, s.vendor_total),
            format_metric(s.metric, s.analytic_total),
            format_rel(s.max_rel),
            s.worst_page or "-",
            str(s.passed),
            str(s.failed),
        ]
        for s in gated
    ]
    return ["## Gated stages", "", *_table([*head, "pass", "fail"], body)]


def _branch_detail(summary: list[LeafSummary]) -> list[str]:
    """Vision stages side by side per branch (global vs crops), every metric; analytic-only where not measured."""
    by_key = {(s.stage, s.part, s.metric): s for s in summary}
    stages = list(dict.fromkeys(s.stage for s in summary))
    metrics = list(dict.fromkeys(s.metric for s in summary))
    out = ["## Per-branch detail", "", "Totals over pages, vendor / analytic; `-`: no measured counterpart yet.", ""]
    for stage in stages:
        parts = list(dict.fromkeys(s.part for s in summary if s.stage == stage))
        body = []
        for metric in metrics:
            cells = [metric]
            for part in parts:
                s = by_key.get((stage, part, metric))
                cells.append(_pair(s) if s else "-")
            body.append(cells)
        out += [f"### {stage}", "", *_table(["metric", *parts], body)]
    return out


def _pair(s: LeafSummary) -> str:
    analytic = format_metric(s.metric, s.analytic_total)
    if s.vendor_total is None:
        return f"- / {analytic}"
    return f"{format_metric(s.metric, s.vendor_total)} / {analytic} ({format_rel(s.max_rel)} max)"


def _pages(run: RunResult) -> list[str]:
    head = ["page", "status", "source", "size", "grid", "image tokens", "prefill len", "worst rel delta", "cache"]
    ordered = sorted(run.pages, key=lambda p: (p.passed, p.page.page_id))  # failures first
    return ["## Pages", "", *_table(head, [_page_cells(p) for p in ordered])]


def _page_cells(p: PageResult) -> list[str]:
    w = p.workload or {}
    status = "PASS" if p.passed else (f"ERROR ({p.error_kind})" if p.error else "FAIL")
    source = p.page.source + (f": {p.page.attributes['data_source']}" if p.page.attributes.get("data_source") else "")
    grid = f"{w['w_crop']}x{w['h_crop']}" if w.get("n_crops") else ("none" if w else "-")
    rels = [r.rel_delta for r in p.rows if r.passed is not None and r.rel_delta is not None]
    return [
        p.page.page_id,
        status,
        source + (" (synthetic)" if p.page.synthetic else ""),
        f"{p.page.width}x{p.page.height}",
        grid,
        str(w.get("n_image_tokens", "-")),
        str(w.get("prefill_len", "-")),
        format_rel(max(rels)) if rels else "-",
        "hit" if p.cache_hit else "miss",
    ]


def _json_block(title: str, data: Any) -> list[str]:
    return [f"## {title}", "", "```json", json.dumps(data, indent=2, sort_keys=True, default=str), "```", ""]


def _table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head), *(line(r) for r in rows), ""]
