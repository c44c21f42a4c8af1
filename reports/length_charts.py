"""The HTML report's output-length chart: what a page costs as it decodes, the decode share of each page and the
K/V cache a page ends with, against the output length each page was verified at.

Decode is the part of a page that grows with its output (~1,100-1,500 tokens on a real page) and the part a GPU is
bound by (it reads every weight per token), so a reader sizing hardware must see the length next to the cost.
Drawn from the analytic side (it covers every stage and metric; on a passing run it equals the measured figures),
with the measured K/V cache beside it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from reports.format import format_metric
from reports.html_charts import _RC, ANALYTIC_COLOR, STAGE_COLORS, VENDOR_COLOR, _figure, _round_ticks, metric_name
from reports.model import PageResult, RunResult

SHARE_METRICS = ("io_bytes", "tensor_flops")  # the decode share is drawn for these
CURVE_METRIC = "io_bytes"  # the cumulative curve: decode is bandwidth-bound


def _decode_steps(p: PageResult) -> list[dict[str, Any]]:
    stages = (p.analytic or {}).get("stages") or {}
    return list((stages.get("decode") or {}).get("steps") or [])


def _kv_end(side: dict[str, Any] | None) -> float | None:
    kv = ((side or {}).get("memory") or {}).get("kv_cache_resident_bytes") or []
    return float(kv[-1]) if kv else None


def length_table(run: RunResult, df: pd.DataFrame) -> pd.DataFrame:
    """One row per page with decode steps, indexed by page id: its length, decode's share of each SHARE_METRICS
    (analytic, all stages summed) and the K/V cache bytes after its last step (analytic and measured)."""
    rows = []
    shares = df[df.metric.isin(SHARE_METRICS)]  # summed once, not filtered per page (a run has 1,355 pages)
    total = shares.groupby(["page_id", "metric"]).analytic.sum()
    decode = shares[shares.stage == "decode"].groupby(["page_id", "metric"]).analytic.sum()
    for p in run.pages:
        k = (p.workload or {}).get("decode_tokens")
        if not k or not _decode_steps(p):
            continue
        row: dict[str, Any] = {"page_id": p.page.page_id, "decode_tokens": int(k)}
        for metric in SHARE_METRICS:
            whole = float(total.get((p.page.page_id, metric), 0.0))
            part = float(decode.get((p.page.page_id, metric), 0.0))
            row[f"decode_share_{metric}"] = 100 * part / whole if whole else None
        row["kv_end_analytic"] = _kv_end(p.analytic)
        row["kv_end_vendor"] = _kv_end(p.trace)
        rows.append(row)
    return pd.DataFrame(rows).set_index("page_id") if rows else pd.DataFrame()


def length_cells(lengths: pd.DataFrame, page_id: str) -> tuple[str, str]:
    """A page-table row's two length cells: decode's share of the page's io bytes (analytic) and the K/V cache after
    its last step (measured, else analytic); "-" for a page without decode steps.  ``lengths``: `length_table`
    indexed by page id."""
    if lengths.empty or page_id not in lengths.index:
        return "-", "-"
    r = lengths.loc[page_id]
    kv = r.kv_end_vendor if pd.notna(r.kv_end_vendor) else r.kv_end_analytic
    share = "-" if pd.isna(r.decode_share_io_bytes) else f"{r.decode_share_io_bytes:.0f}%"
    return share, "-" if pd.isna(kv) else format_metric("kv_cache_bytes", kv)


def _curve(p: PageResult, df: pd.DataFrame) -> tuple[list[int], dict[str, list[float]]]:
    """Cumulative CURVE_METRIC of one page by stage after t = 0..K output tokens: every stage but decode is paid
    before the first token (flat), decode adds its step t at t."""
    mine = df[(df.page_id == p.page.page_id) & (df.metric == CURVE_METRIC)]
    steps = _decode_steps(p)
    ts = list(range(len(steps) + 1))
    bands: dict[str, list[float]] = {}
    for stage in [s for s in STAGE_COLORS if s != "decode" and s in set(mine.stage)]:
        bands[stage] = [float(mine[mine.stage == stage].analytic.sum())] * len(ts)
    running, decode = 0.0, [0.0]
    for st in steps:
        running += sum(float((leaf or {}).get(CURVE_METRIC) or 0) for leaf in st.values())
        decode.append(running)
    bands["decode"] = decode
    return ts, bands


def length_chart(run: RunResult, df: pd.DataFrame):
    """Three panels: the longest page's cumulative bytes by stage against its output tokens; each page's decode
    share against its length; each page's K/V cache at its end.  None when no page decoded."""
    table = length_table(run, df)
    if table.empty:
        return None
    import matplotlib as mpl

    longest = max((p for p in run.pages if _decode_steps(p)), key=lambda p: len(_decode_steps(p)))
    ts, bands = _curve(longest, df)
    with mpl.rc_context(_RC):
        fig = _figure(11, 3.6)
        ax_curve, ax_share, ax_kv = fig.subplots(1, 3)
        ax_curve.stackplot(
            ts, *bands.values(), labels=list(bands), colors=[STAGE_COLORS.get(s, "#6b6b6b") for s in bands]
        )
        ax_curve.set_xlabel("output tokens")
        ax_curve.set_ylabel(f"{metric_name(CURVE_METRIC)}, cumulative")
        ax_curve.set_title(f"{longest.page.page_id[:28]}", fontsize=9.5)
        _round_ticks(ax_curve, CURVE_METRIC)
        ax_curve.legend(loc="upper left", fontsize=7, frameon=False)
        for metric, marker in zip(SHARE_METRICS, ("o", "D"), strict=True):
            ax_share.scatter(
                table.decode_tokens, table[f"decode_share_{metric}"], marker=marker, s=24, label=metric_name(metric)
            )
        ax_share.set_ylim(0, 100)
        ax_share.set_xlabel("output tokens (page's decode length)")
        ax_share.set_ylabel("decode's share of the page, %")
        ax_share.set_title("Decode share per page", fontsize=9.5)
        ax_share.legend(loc="lower right", fontsize=7, frameon=False)
        ax_kv.scatter(
            table.decode_tokens, table.kv_end_analytic, s=22, marker="D", color=ANALYTIC_COLOR, label="analytic"
        )
        measured = table.kv_end_vendor.notna()
        ax_kv.scatter(
            table.decode_tokens[measured],
            table.kv_end_vendor[measured],
            s=80,
            facecolors="none",
            edgecolors=VENDOR_COLOR,
            label="measured",
        )
        ax_kv.set_xlabel("output tokens")
        ax_kv.set_ylabel("K/V cache at the page's end")
        ax_kv.set_title("K/V cache per page", fontsize=9.5)
        _round_ticks(ax_kv, "kv_cache_bytes")
        ax_kv.legend(loc="lower right", fontsize=7, frameon=False)
        for ax in (ax_curve, ax_share, ax_kv):
            ax.set_xlim(left=0)
            ax.grid(color="#e6e6e6", linewidth=0.6)
            ax.set_axisbelow(True)
        fig.suptitle("Cost against output length", x=0.01, ha="left", fontweight="bold", fontsize=11)
    lengths = sorted(set(table.decode_tokens))
    span = f"{lengths[0]:,}" if len(lengths) == 1 else f"{lengths[0]:,} to {lengths[-1]:,}"
    total = format_metric(CURVE_METRIC, sum(b[-1] for b in bands.values()))
    caption = (
        f"Pages verified at {span} output tokens. Left: the longest page's {metric_name(CURVE_METRIC)} by stage as it "
        f"decodes ({total} after {ts[-1]:,} tokens; every stage but decode is paid before the first token). "
        "Middle: decode's share of each page (analytic, all stages). Right: the K/V cache each page ends with."
    )
    return fig, "Cost against output length", caption
