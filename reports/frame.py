"""The comparison as ONE pandas DataFrame (page x stage x part x metric); every summary is a group-by of it.

Columns: the `ComparisonRow` fields (page_id, stage, part, metric, vendor, analytic, abs_delta, rel_delta,
tolerance, passed, gap_family, note), the page's geometry (`PAGE_COLUMNS`), and ``status``:

- ``pass`` / ``fail``: a gated row within / outside its tolerance;
- ``not run``: a gated row of a branch the workload does not have (the crops of a page without crops):
  0 vs 0 proves nothing, so it is neither a pass nor a fail;
- ``reported``: a metric shown but not gated (not measured, or not modeled op by op by the profile);
- ``error``: the page could not be verified (no rows; listed apart).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pandas as pd

from core.metrics import METRICS, PEAK_METRICS
from core.schema import STAGES, leaf_paths
from reports.model import ComparisonRow, RunResult

ROW_COLUMNS = tuple(f.name for f in fields(ComparisonRow))
PAGE_COLUMNS = (
    "source",
    "data_source",
    "synthetic",
    "mode",
    "width",
    "height",
    "w_crop",
    "h_crop",
    "n_crops",
    "n_image_tokens",
    "prefill_len",
    "decode_tokens",
    "cache_hit",
)
COLUMNS = (*ROW_COLUMNS, "status", *PAGE_COLUMNS)
ALL_EQUAL = "all equal"


def _report_order(stages: tuple[str, ...]) -> dict[tuple[str, str, str], int]:
    """(stage, part, metric) -> position: the run's stages (its family's, from the config) in pipeline order."""
    return {key: i for i, key in enumerate((s, p, m) for s, p in leaf_paths(stages) for m in METRICS)}


def comparison_frame(run: RunResult) -> pd.DataFrame:
    """One row per page x stage x part x metric of the pages that were compared, in report order."""
    records = []
    for page in run.pages:
        w = page.workload or {}
        info = {
            "source": page.page.source,
            "data_source": page.page.attributes.get("data_source", ""),
            "synthetic": page.page.synthetic,
            "mode": w.get("mode", ""),
            "width": page.page.width,
            "height": page.page.height,
            "cache_hit": page.cache_hit,
            **{k: w.get(k) for k in ("w_crop", "h_crop", "n_crops", "n_image_tokens", "prefill_len", "decode_tokens")},
        }
        for row in page.rows:
            d = row.to_dict()
            d["status"] = _status(row, int(w.get("n_crops") or 0))
            records.append({**d, **info})
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    if df.empty:
        return df
    df["gap_family"] = df.gap_family.fillna("")  # text columns stay text: '' rather than NaN when absent
    df["note"] = df.note.fillna("")
    order = _report_order(tuple(run.config.get("stages") or STAGES))
    df["_order"] = [order.get((s, p, m), len(order)) for s, p, m in zip(df.stage, df.part, df.metric, strict=True)]
    return df.sort_values(["_order", "page_id"], kind="stable").drop(columns="_order").reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    """A run's comparison frame and its leaf summary, built once per report and handed to every view: rebuilding
    them in each renderer repeats the same group-bys (and would let two views of one run drift apart)."""

    frame: pd.DataFrame
    summary: pd.DataFrame

    @classmethod
    def of(cls, run: RunResult) -> Comparison:
        frame = comparison_frame(run)
        return cls(frame, leaf_summary(frame))


def _status(row: ComparisonRow, n_crops: int) -> str:
    if row.passed is None:
        return "reported"
    if row.part == "crops" and n_crops == 0:
        return "not run"
    return "pass" if row.passed else "fail"


def leaf_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per stage x part x metric over the pages: totals (peaks: the largest), tolerance, pass/fail/not-run counts,
    worst delta and page.

    ``worst_page`` is ``ALL_EQUAL`` when every page has the same relative delta (e.g. all exact)."""
    cols = ["stage", "part", "metric", "gated", "pages", "vendor_total", "analytic_total", "tolerance"]
    cols += ["max_rel", "worst_page", "passed", "failed", "not_run"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (stage, part, metric), g in df.groupby(["stage", "part", "metric"], sort=False):
        ran = g[g.status != "not run"]
        rel = ran.rel_delta.dropna()
        tolerances = g.tolerance.dropna().unique()
        worst = None
        if len(rel):
            worst = ALL_EQUAL if rel.nunique() == 1 and len(rel) > 1 else str(ran.loc[rel.idxmax(), "page_id"])
        out.append(
            {
                "stage": stage,
                "part": part,
                "metric": metric,
                "gated": bool(g.tolerance.notna().any()),
                "pages": len(ran),
                "vendor_total": _over_pages(metric, ran.vendor) if ran.vendor.notna().any() else None,
                "analytic_total": float(_over_pages(metric, ran.analytic)),
                "tolerance": float(tolerances[0]) if len(tolerances) == 1 else None,
                "max_rel": float(rel.max()) if len(rel) else None,
                "worst_page": worst,
                "passed": int((g.status == "pass").sum()),
                "failed": int((g.status == "fail").sum()),
                "not_run": int((g.status == "not run").sum()),
            }
        )
    return pd.DataFrame(out, columns=cols)


def _over_pages(metric: str, values: pd.Series) -> float:
    """Pages' figures combined: the sum of work, the largest of high-water marks (`core.metrics.combine`)."""
    return values.max() if metric in PEAK_METRICS else values.sum()


def failing(df: pd.DataFrame) -> pd.DataFrame:
    """Rows outside tolerance, worst relative delta first."""
    if df.empty:
        return df
    bad = df[df.status == "fail"]
    return bad.sort_values("rel_delta", ascending=False, na_position="first", kind="stable")


def page_worst(df: pd.DataFrame) -> pd.Series:
    """page_id -> the largest relative delta among its gated rows that ran."""
    if df.empty:
        return pd.Series(dtype=float)
    gated = df[df.status.isin(("pass", "fail"))]
    return gated.groupby("page_id", sort=False).rel_delta.max()
