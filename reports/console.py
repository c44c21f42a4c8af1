"""The end-of-run console summary: one compact table and a one-line verdict."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reports.format import format_metric, format_rel
from reports.safe import printable, safe_tree
from reports.summary import is_synthetic, summarize, verdict_line
from verify.model import RunResult

_VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "INCOMPLETE COUNT": "bold red", "ERROR": "bold yellow"}


def summary_table(run: RunResult) -> Table:
    """Per stage x part (gated metrics): totals over pages, worst relative delta, pass/fail counts."""
    gated = [s for s in summarize(run) if s.gated]
    many_metrics = len({s.metric for s in gated}) > 1
    n = len(run.pages)
    table = Table(title=f"{run.command} · {n} page{'' if n == 1 else 's'}", title_justify="left", padding=(0, 1))
    table.add_column("stage", no_wrap=True, min_width=9)
    table.add_column("part", no_wrap=True)
    if many_metrics:
        table.add_column("metric")
    for name in ("vendor", "analytic", "max rel Δ", "pass", "fail"):
        table.add_column(name, justify="right", no_wrap=True)  # a wrapped number is unreadable
    for s in gated:
        fail_cell = f"[bold red]{s.failed}[/]" if s.failed else "0"
        rel_style = "red" if s.failed else "green"
        cells = [s.stage, s.part, *([s.metric] if many_metrics else [])]  # schema names: no markup
        cells += [format_metric(s.metric, s.vendor_total), format_metric(s.metric, s.analytic_total)]
        cells += [f"[{rel_style}]{format_rel(s.max_rel)}[/]", str(s.passed), fail_cell]
        table.add_row(*cells)
    return table


def print_summary(run: RunResult, console: Console | None = None, paths: dict[str, Path] | None = None) -> None:
    console = console or Console()
    run = safe_tree(run)
    if any(s.gated for s in summarize(run)):
        console.print(summary_table(run))
    if is_synthetic(run):
        console.print("[dim]pages: embedded synthetic geometries, not the real OmniDocBench[/]")
    for page in (p for p in run.pages if p.error):
        kind = page.error_kind or "error"
        text = f"[yellow]{escape(printable(page.page.page_id))}[/]: {kind}: {escape(printable(page.error or ''))}"
        console.print(text, highlight=False)
    if paths:
        console.print(f"[dim]reports: {escape(printable(str(Path(paths['markdown']).parent)))}[/]", highlight=False)
    console.print(f"[{_VERDICT_STYLE.get(run.verdict, 'bold')}]{escape(verdict_line(run))}[/]", highlight=False)
