"""The end-of-run console summary: one compact table and a one-line verdict."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.families import DEFAULT_FAMILY
from core.metrics import PEAK_METRICS
from reports.format import format_metric, format_rel
from reports.frame import Comparison
from reports.model import RunResult
from reports.safe import printable
from reports.summary import (
    decode_line,
    gated_summary,
    implementation_label,
    is_synthetic,
    library_line,
    reported_line,
    verdict_line,
)

_VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "INCOMPLETE COUNT": "bold red", "ERROR": "bold yellow"}
_NUMERIC = ("vendor", "analytic", "tolerance", "max rel Δ", "pass", "fail", "not run")
_UNITS = 11  # '15.63 TFLOP'

_FIXED = {"stage": 16}  # 'projector/global': never cut


def summary_tables(run: RunResult, comparison: Comparison | None = None) -> list[Table]:
    """One table per gated metric (80 columns each): per stage x part, totals over pages, tolerance, worst relative
    delta, pass/fail/not-run.  Leaves that are zero on both sides on every page (a vision stage's KV cache) are left
    to the reports."""
    gated = gated_summary((Comparison.of(run) if comparison is None else comparison).summary)
    return [_metric_table(run, metric, g) for metric, g in gated.groupby("metric", sort=False)]


def _metric_table(run: RunResult, metric: str, gated) -> Table:
    shown = gated[(gated.vendor_total.fillna(0) != 0) | (gated.analytic_total != 0)]
    gated = shown if len(shown) else gated
    n = len(run.pages)
    over = "largest" if metric in PEAK_METRICS else "totals"  # a high-water mark does not add up over pages
    title = f"{metric} · {over} over {n} page{'' if n == 1 else 's'}"
    tolerances = gated.tolerance.dropna().unique()
    one_tolerance = len(tolerances) == 1  # then the title says it and the table keeps to 80 columns
    if one_tolerance:
        title += f" · tolerance {format_rel(float(tolerances[0]))}"
    numeric = [c for c in _NUMERIC if not (one_tolerance and c == "tolerance")]
    # 80 columns hold it all: no vertical rules, stage and part in one cell, 2-digit numbers; nothing is cut
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("stage", no_wrap=True, min_width=_FIXED["stage"])
    for name in numeric:  # never wrapped, never shorter than the header: a cut header or number is unreadable
        width = _UNITS if name in ("vendor", "analytic") else len(name)
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    for s in gated.itertuples():
        fail_cell = f"[bold red]{s.failed}[/]" if s.failed else "0"
        rel_style = "red" if s.failed else "green"
        cells = [f"{s.stage}/{s.part}"]  # schema names: no markup
        cells += [format_metric(s.metric, s.vendor_total, 2), format_metric(s.metric, s.analytic_total, 2)]
        cells += [] if one_tolerance else [format_rel(s.tolerance)]
        rel = format_rel(s.max_rel) if s.pages else "not run"
        cells += [f"[{rel_style}]{rel}[/]", str(s.passed), fail_cell]
        cells.append(str(s.not_run) if s.not_run else "-")
        table.add_row(*cells)
    return table


def print_summary(run: RunResult, console: Console | None = None, paths: dict[str, Path] | None = None) -> None:
    console = console or Console()  # every user-supplied string below goes through printable()
    comparison = Comparison.of(run)
    for table in summary_tables(run, comparison):
        console.print(table)
    reported = reported_line(comparison.summary)
    if reported:
        console.print(f"[dim]{escape(reported)}[/]", highlight=False)
    model, backend = run.config.get("model", DEFAULT_FAMILY), run.config.get("backend", "?")
    impl = implementation_label(run)
    impl = f" · {impl}" if impl else ""
    console.print(
        f"[dim]model {escape(printable(str(model)))} · backend {escape(printable(str(backend)))}{escape(impl)}[/]"
    )
    lengths = decode_line(run)
    if lengths:
        console.print(f"[dim]{escape(lengths)}[/]", highlight=False)
    if is_synthetic(run):
        console.print("[dim]pages: embedded synthetic geometries, not the real OmniDocBench[/]")
    for page in (p for p in run.pages if p.error):
        kind = page.error_kind or "error"
        text = f"[yellow]{escape(printable(page.page.page_id))}[/]: {kind}: {escape(printable(page.error or ''))}"
        console.print(text, highlight=False)
    if paths:
        console.print(f"[dim]reports: {escape(printable(str(Path(paths['markdown']).parent)))}[/]", highlight=False)
    style = _VERDICT_STYLE.get(run.verdict, "bold")
    if library_line(run) and run.verdict == "PASS":
        style = "bold yellow"  # a pass on an unverified library is not the plain green pass
    console.print(f"[{style}]{escape(verdict_line(run, comparison))}[/]", highlight=False)
