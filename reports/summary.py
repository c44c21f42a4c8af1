"""Run-level facts shared by every report format: the verdict line, synthetic pages, the gated summary.

All figures are group-bys of the comparison frame (`reports.frame`), never sums kept by hand.
"""

from __future__ import annotations

import statistics

import pandas as pd

from reports.format import format_rel
from reports.frame import Comparison, failing
from reports.model import RunResult
from reports.safe import printable


def is_synthetic(run: RunResult) -> bool:
    """True when any page is synthetic (the reports must say so)."""
    return any(p.page.synthetic for p in run.pages)


def gated_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A `leaf_summary` restricted to gated metrics."""
    return summary[summary.gated] if not summary.empty else summary


def library_range(run: RunResult) -> dict:
    """What the run's environment says of its libraries (`core.releases.library_report`; {} for old runs)."""
    return run.environment.get("library_range") or {}


def library_line(run: RunResult) -> str | None:
    """'UNVERIFIED LIBRARY: transformers 5.26.0 is newer than the supported range 5.23-5.25; failing stages may be
    library changes, not model errors: run scripts/drift.sh', or None when every library is a verified release."""
    lr = library_range(run)
    if not lr or lr.get("verified", True):
        return None
    notes = "; ".join(printable(str(n)) for n in lr.get("notes") or ())
    return f"UNVERIFIED LIBRARY: {notes} (profile variant {printable(str(lr.get('variant')))}); {lr.get('advice')}"


def implementation_label(run: RunResult) -> str | None:
    """'transformers 5.24.0, profile hf@5.24': the library release the vendor ran and the variant that mirrors it."""
    lr = library_range(run)
    if not lr:
        return None
    return printable(f"{lr.get('library')} {lr.get('library_version')}, profile {lr.get('variant')}")


def verdict_line(run: RunResult, comparison: Comparison | None = None) -> str:
    """One line: the verdict, page counts and the worst gated delta; on a library release the profiles were not
    verified with, the line opens by saying so (the exit code is the verdict's all the same: docs/running.md)."""
    unverified = library_line(run)
    line = _verdict_line(run, Comparison.of(run) if comparison is None else comparison)
    if unverified is None:
        return line
    word, _, rest = line.partition(":")
    return f"{unverified}. {word} {'anyway' if word == 'PASS' else 'on it'}:{rest}"


def _verdict_line(run: RunResult, comparison: Comparison) -> str:
    n = len(run.pages)
    errors = [p for p in run.pages if p.error]
    fails = [p for p in run.pages if not p.error and not p.passed]
    gated = gated_summary(comparison.summary)
    parts = [f"{run.verdict}:"]
    if not fails and not errors:
        max_rel = gated.max_rel.max() if len(gated) and gated.max_rel.notna().any() else 0.0
        checks = int(gated.passed.sum()) if len(gated) else 0
        not_run = int(gated.not_run.sum()) if len(gated) else 0
        skipped = f", {not_run} not run" if not_run else ""
        parts.append(
            f"all {n} pages within tolerance ({checks} gated checks{skipped}, max rel delta {format_rel(max_rel)})"
        )
    else:
        if fails:
            parts.append(f"{len(fails)} of {n} pages outside tolerance")
        worst = failing(comparison.frame).head(1)
        for r in worst.itertuples():
            fam = f", gap in {r.gap_family}" if r.gap_family else ""
            where = f"{r.stage}/{r.part} {r.metric} {format_rel(r.rel_delta)} > {format_rel(r.tolerance)}"
            parts.append(f"(worst {where} on {printable(r.page_id)}{fam})")
        if errors:
            parts.append(("; " if fails else "") + f"{len(errors)} of {n} pages could not be verified")
    return " ".join(parts).replace(" ;", ";")


def reported_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Per metric that is measured but not gated (from a `leaf_summary`): the worst relative delta and where."""
    if summary.empty:
        return pd.DataFrame(columns=["metric", "max_rel", "where"])
    shown = summary[~summary.gated & summary.max_rel.notna()]
    out = []
    for metric, g in shown.groupby("metric", sort=False):
        worst = g.loc[g.max_rel.idxmax()]
        out.append({"metric": metric, "max_rel": float(worst.max_rel), "where": f"{worst.stage}/{worst.part}"})
    return pd.DataFrame(out, columns=["metric", "max_rel", "where"])


def reported_line(summary: pd.DataFrame) -> str | None:
    """'reported, not gated: io_bytes worst 35.12% (sam/global), ...' or None when every measured metric is gated."""
    rep = reported_summary(summary)
    if rep.empty:
        return None
    cells = [f"{r.metric} {format_rel(r.max_rel)} ({r.where})" for r in rep.itertuples()]
    return "measured, not gated (the profile does not model them yet), worst delta: " + ", ".join(cells)


def decode_line(run: RunResult) -> str | None:
    """'decode tokens per page: min 700 · median 1,350 · max 2,900 over 16 pages (from-reference)', or '... 16 on every
    page' when all are equal; None for a vision-only run or one where no page got a workload."""
    if run.config.get("vision_only"):
        return None
    given = (p.workload.get("decode_tokens") for p in run.pages if p.workload)
    lengths = sorted(int(n) for n in given if n is not None)  # an older run's workloads may not say
    if not lengths:
        return None
    rule = run.config.get("decode_lengths") or "fixed"
    how = "" if rule == "fixed" else f" ({rule})"
    if lengths[0] == lengths[-1]:
        return f"decode tokens per page: {lengths[0]:,} on every page{how}"
    median = statistics.median(lengths)
    shown = f"{median:,.0f}" if median == int(median) else f"{median:,.1f}"
    n = len(lengths)
    return f"decode tokens per page: min {lengths[0]:,} · median {shown} · max {lengths[-1]:,} over {n} pages{how}"
