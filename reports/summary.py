"""Aggregates over a run shared by the markdown report and the console table."""

from __future__ import annotations

from dataclasses import dataclass

from analytic.schema import METRICS, leaf_paths
from reports.format import format_rel
from verify.model import ComparisonRow, RunResult

_ORDER = {(s, p, m): i for i, (s, p, m) in enumerate((s, p, m) for s, p in leaf_paths() for m in METRICS)}


@dataclass
class LeafSummary:
    """One stage x part x metric over all pages of a run."""

    stage: str
    part: str
    metric: str
    pages: int = 0
    gated: bool = False
    passed: int = 0
    failed: int = 0
    max_rel: float | None = None
    worst_page: str | None = None
    vendor_total: float | None = None
    analytic_total: float = 0.0


def summarize(run: RunResult) -> list[LeafSummary]:
    """Per stage x part x metric: totals, pass/fail counts and the worst relative delta, in report order."""
    out: dict[tuple[str, str, str], LeafSummary] = {}
    for row in (r for p in run.pages for r in p.rows):
        key = (row.stage, row.part, row.metric)
        s = out.setdefault(key, LeafSummary(*key))
        s.pages += 1
        s.analytic_total += row.analytic
        if row.vendor is not None:
            s.vendor_total = (s.vendor_total or 0.0) + row.vendor
        if row.passed is not None:
            s.gated = True
            s.passed += row.passed
            s.failed += not row.passed
        if row.rel_delta is not None and (s.max_rel is None or row.rel_delta > s.max_rel):
            s.max_rel, s.worst_page = row.rel_delta, row.page_id
    return sorted(out.values(), key=lambda s: _ORDER.get((s.stage, s.part, s.metric), len(_ORDER)))


def failing_rows(run: RunResult) -> list[ComparisonRow]:
    """Rows outside tolerance, worst relative delta first."""
    rows = [r for p in run.pages for r in p.rows if r.passed is False]
    return sorted(rows, key=lambda r: -(r.rel_delta if r.rel_delta is not None else float("inf")))


def is_synthetic(run: RunResult) -> bool:
    """True when any page is synthetic (the reports must say so)."""
    return any(p.page.synthetic for p in run.pages)


def verdict_line(run: RunResult) -> str:
    """One line: the verdict, page counts and the worst gated delta."""
    n = len(run.pages)
    errors = [p for p in run.pages if p.error]
    fails = [p for p in run.pages if not p.error and not p.passed]
    worst = failing_rows(run)[:1]
    gated = [s for s in summarize(run) if s.gated]
    parts = [f"{run.verdict}:"]
    if not fails and not errors:
        max_rel = max((s.max_rel or 0.0 for s in gated), default=0.0)
        checks = sum(s.passed for s in gated)
        parts.append(f"all {n} pages within tolerance ({checks} gated checks, max rel delta {format_rel(max_rel)})")
    else:
        if fails:
            parts.append(f"{len(fails)} of {n} pages outside tolerance")
        if worst:
            r = worst[0]
            fam = f", gap in {r.gap_family}" if r.gap_family else ""
            where = f"{r.stage}/{r.part} {r.metric} {format_rel(r.rel_delta)} > {format_rel(r.tolerance)}"
            parts.append(f"(worst {where} on {r.page_id}{fam})")
        if errors:
            parts.append(("; " if fails else "") + f"{len(errors)} of {n} pages could not be verified")
    return " ".join(parts).replace(" ;", ";")
