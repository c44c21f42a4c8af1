"""The JSON report: everything, traces and analytic documents included, as strict JSON.

Format 2 holds each distinct decode step once per run (`reports.step_tables`); `read_report` gives any format
back with every page's steps in place, the way format 1 wrote them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from reports.frame import Comparison
from reports.model import PageResult, RunResult
from reports.step_tables import expand_steps, is_tabled, table_steps
from reports.summary import is_synthetic, library_range, verdict_line

REPORT_FORMAT = 2  # 2: decode steps tabled (reports.step_tables); 1: every page's steps written out
REPORT_FORMATS = (1, 2)  # what read_report takes


def run_document(run: RunResult, comparison: Comparison | None = None) -> dict[str, Any]:
    comparison = Comparison.of(run) if comparison is None else comparison
    summary = comparison.summary.astype(object).where(lambda t: t.notna(), None).to_dict("records")
    return jsonable(
        table_steps(
            {
                "report_format": REPORT_FORMAT,
                "run_id": run.run_id,
                "command": run.command,
                "verdict": run.verdict,
                "verdict_line": verdict_line(run, comparison),
                "library_verified": library_range(run).get("verified"),  # None: a run that did not record it
                "synthetic_pages": is_synthetic(run),
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "wall_s": run.wall_s,
                "config": run.config,
                "environment": run.environment,
                "summary": summary,
                "pages": [_page(p) for p in run.pages],
            }
        )
    )


def read_report(doc: dict[str, Any]) -> dict[str, Any]:
    """A parsed report.json of any of REPORT_FORMATS with its pages' decode steps in place (format 1's layout;
    a damaged table is a `reports.step_tables.StepTableError`)."""
    return expand_steps(doc) if is_tabled(doc) else doc


def _page(p: PageResult) -> dict[str, Any]:
    return {
        "page": p.page,
        "passed": p.passed,
        "error": p.error,
        "error_kind": p.error_kind,
        "cache_hit": p.cache_hit,
        "decode_tokens": (p.workload or {}).get("decode_tokens"),  # the length this page was verified at
        "workload": p.workload,  # once per page: the analytic document's own copy is left out below
        "rows": p.rows,
        "analytic": {k: v for k, v in p.analytic.items() if k != "workload"} if p.analytic else p.analytic,
        "trace": p.trace,  # kept whole (its workload included): a valid trace document for dsocr-diff
    }


_ATOMS = frozenset({str, int, bool, type(None)})  # exact types jsonable hands back as they are


def jsonable(obj: Any) -> Any:
    """Plain JSON types only; non-finite floats become the strings 'inf', '-inf', 'nan' (strict JSON has none).
    Exact plain types first (a run's document is millions of ints in dicts and lists of str keys), then the rest."""
    t = type(obj)
    if t in _ATOMS:
        return obj
    if t is dict:
        return {k if type(k) is str else str(k): v if type(v) in _ATOMS else jsonable(v) for k, v in obj.items()}
    if t is list:
        return [v if type(v) in _ATOMS else jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(jsonable(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "item"):  # numpy / torch scalars
        return jsonable(obj.item())
    raise TypeError(f"report JSON cannot hold {type(obj).__name__}: convert it to plain data before reporting")
