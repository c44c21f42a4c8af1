"""The HTML report's charts: matplotlib figures rendered to inline SVG (no JavaScript, no network, text kept as
text), each a group-by of the comparison frame; `reports.html` places them in the page."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import pandas as pd

from core.families import FAMILY_TABLE
from reports.format import axis_ticks, format_metric
from reports.model import RunResult
from reports.safe import html_line as _e
from reports.safe import printable

MAX_PAGE_BARS = 40  # "where the cost goes": one bar per page up to this many, else one per mode
CHART_METRIC = "tensor_flops"  # the per-page charts total this metric
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
VENDOR_COLOR, ANALYTIC_COLOR, FAIL_COLOR, MUTED = "#0072B2", "#E69F00", "#C0392B", "#6b6b6b"
# a colour per pipeline position (Okabe-Ito): a family's n-th vision stage takes the n-th vision colour, so DeepSeek-OCR
# 2's encoder takes CLIP's (one family per run)
VISION_COLORS = ("#0072B2", "#E69F00", "#009E73")
STAGE_COLORS = {
    **{stage: VISION_COLORS[i] for fam in FAMILY_TABLE for i, stage in enumerate(fam.vision_stages)},
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


def _short(text: Any, limit: int = 36) -> str:
    """A chart label: printable, and cut in the middle when long (the tables carry the full name)."""
    text = printable(str(text))
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit - limit // 2) :]


def crop_grid(w: dict[str, Any] | None) -> str:
    """'2x3' for a page cut into crops, 'none' for one without, '-' when there is no workload."""
    if not w:
        return "-"
    if missing(w.get("n_crops")) or not w.get("n_crops"):
        return "none"
    return f"{_int(w.get('w_crop'))}x{_int(w.get('h_crop'))}"


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def missing(value: Any) -> bool:
    """None or NaN: pandas writes an absent figure as NaN, a report shows both as absent."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def page_flops(df: pd.DataFrame) -> pd.DataFrame:
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


def figure_html(made: tuple[Any, str, str] | None, index: int) -> list[str]:
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


def page_chart(run: RunResult, df: pd.DataFrame):
    """Total CHART_METRIC per page against its image tokens, vendor and analytic markers, crop grid labelled."""
    per_page = page_flops(df).dropna(subset=["n_image_tokens"])
    if per_page.empty:
        return None
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    geometry = per_page[["w_crop", "h_crop", "n_crops"]].to_dict("records")
    per_page = per_page.assign(grid=[crop_grid(r) for r in geometry])
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
        ax.set_ylabel(f"{metric_name(CHART_METRIC)} per page")
        ax.set_ylim(bottom=0, top=per_page[["vendor", "analytic"]].max().max() * 1.15)
        _round_ticks(ax, CHART_METRIC)
        span = max(x.max() - x.min(), 0.1 * x.max(), 1.0)  # pages of one size: a readable range around them
        ax.set_xlim(max(0.0, x.min() - 0.08 * span), x.max() + 0.12 * span)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens are whole: no '902.925' ticks
        _label_points(ax, per_page, len(modes) > 1, (width * 72 - 90, height * 72 - 70))
        ax.set_title(f"{metric_name(CHART_METRIC)} by page ({_modes(modes)}), labelled with the crop grid")
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


def metric_name(metric: str) -> str:
    """'tensor_flops' -> 'tensor FLOPs', 'io_bytes' -> 'io bytes'."""
    return metric.replace("_flops", " FLOPs").replace("_", " ")


def share_chart(run: RunResult, df: pd.DataFrame):
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
        labels = [f"{_short(pid)} · {crop_grid(info.loc[pid].to_dict())}" for pid in table.index]
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
        ax.set_xlabel(f"share of the analytic {metric_name(CHART_METRIC)} (total at the right)")
        unit = "page" if by_page else "mode"
        ax.set_title(f"Where the cost goes, per {unit} ({_modes(modes)})")
        fig.legend(loc="outside upper right", ncols=len(stages), frameon=False, fontsize=8.5)
    caption = f"Share of total {metric_name(CHART_METRIC)} by stage ({', '.join(stages)}; branches summed), "
    caption += "from the analytic model, which covers every stage" + (
        "." if by_page else "; totals over each mode's pages."
    )
    return fig, "Where the cost goes, by stage", caption
