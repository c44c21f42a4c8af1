"""Run-level facts shared by every report format: the verdict line, synthetic pages, the gated summary.

All figures are group-bys of the comparison frame (`reports.frame`), never sums kept by hand.
"""

from __future__ import annotations

import pandas as pd

from reports.format import format_rel
from reports.frame import comparison_frame, failing, leaf_summary
from reports.model import RunResult
from reports.safe import printable


def is_synthetic(run: RunResult) -> bool:
    """True when any page is synthetic (the reports must say so)."""
    return any(p.page.synthetic for p in run.pages)


def gated_summary(df: pd.DataFrame) -> pd.DataFrame:
    """`leaf_summary` restricted to gated metrics."""
    summary = leaf_summary(df)
    return summary[summary.gated] if not summary.empty else summary


def verdict_line(run: RunResult, df: pd.DataFrame | None = None) -> str:
    """One line: the verdict, page counts and the worst gated delta."""
    df = comparison_frame(run) if df is None else df
    n = len(run.pages)
    errors = [p for p in run.pages if p.error]
    fails = [p for p in run.pages if not p.error and not p.passed]
    gated = gated_summary(df)
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
        worst = failing(df).head(1)
        for r in worst.itertuples():
            fam = f", gap in {r.gap_family}" if r.gap_family else ""
            where = f"{r.stage}/{r.part} {r.metric} {format_rel(r.rel_delta)} > {format_rel(r.tolerance)}"
            parts.append(f"(worst {where} on {printable(r.page_id)}{fam})")
        if errors:
            parts.append(("; " if fails else "") + f"{len(errors)} of {n} pages could not be verified")
    return " ".join(parts).replace(" ;", ";")


def reported_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per metric that is measured but not gated: the worst relative delta and where (stage/part)."""
    summary = leaf_summary(df)
    if summary.empty:
        return pd.DataFrame(columns=["metric", "max_rel", "where"])
    shown = summary[~summary.gated & summary.max_rel.notna()]
    out = []
    for metric, g in shown.groupby("metric", sort=False):
        worst = g.loc[g.max_rel.idxmax()]
        out.append({"metric": metric, "max_rel": float(worst.max_rel), "where": f"{worst.stage}/{worst.part}"})
    return pd.DataFrame(out, columns=["metric", "max_rel", "where"])


def reported_line(df: pd.DataFrame) -> str | None:
    """'reported, not gated: io_bytes worst 35.12% (sam/global), ...' or None when every measured metric is gated."""
    rep = reported_summary(df)
    if rep.empty:
        return None
    cells = [f"{r.metric} {format_rel(r.max_rel)} ({r.where})" for r in rep.itertuples()]
    return "measured, not gated (the profile does not model them yet), worst delta: " + ", ".join(cells)
