"""Renders a `TraceDiff`: JSON document, markdown, rich console tables; writes diff.md + diff.json atomically."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drift.compare import TraceDiff, format_shapes
from drift.load import Side
from drift.summary import headline, leaf_changes, verdict_word
from reports.document import jsonable
from reports.format import format_rel

DIFF_FORMAT = "dsocr-flopcheck/diff"
DIFF_FORMAT_VERSION = 1
DIFF_FILES = {"markdown": "diff.md", "json": "diff.json"}


def diff_document(d: TraceDiff) -> dict[str, Any]:
    """Everything, as strict JSON: every metric row (changed or not), every changed op, the pairing."""
    return jsonable(
        {
            "format": DIFF_FORMAT,
            "format_version": DIFF_FORMAT_VERSION,
            "verdict": verdict_word(d).lower(),
            "exit_code": d.exit_code,
            "headline": headline(d),
            "a": _side(d.a),
            "b": _side(d.b),
            "environment_changes": d.environment[d.environment["changed"].astype(bool)].to_dict("records"),
            "pairs": [
                {"pair": p.key, "page_a": p.a.page_id, "page_b": p.b.page_id, "paired_by": p.paired_by} for p in d.pairs
            ],
            "unpaired": {"a": d.unpaired_a, "b": d.unpaired_b},
            "unmeasured": d.unmeasured,
            "coverage_changes": d.coverage,
            "workload_changes": d.workload.to_dict("records"),
            "leaf_changes": leaf_changes(d).to_dict("records"),
            "metrics": d.metrics.to_dict("records"),
            "ops": d.ops.to_dict("records"),
            "notes": d.notes,
        }
    )


def render_markdown(d: TraceDiff) -> str:
    """Verdict first, then environment, changed totals, per-page rows, ops, pairing and notes."""
    out = [
        f"# dsocr-diff: {d.a.label} vs {d.b.label}",
        "",
        f"**{verdict_word(d)}** (exit {d.exit_code}): {headline(d)}",
        "",
    ]
    out += _md_table(["", "A", "B"], [["path", d.a.label, d.b.label], ["holds", _holds(d.a), _holds(d.b)]])
    env = d.environment.sort_values("changed", ascending=False, kind="stable")
    out += ["", "## Environment", ""]
    out += _md_table(
        ["key", "A", "B", "changed"], [[r.key, r.a, r.b, "**yes**" if r.changed else ""] for r in env.itertuples()]
    )
    leaves = leaf_changes(d)
    out += ["", "## Stage totals that changed (summed over pages)", ""]
    if leaves.empty:
        out.append("None: every stage x part x metric is identical on every paired page.")
    else:
        rows = [
            [r.stage, r.part, r.metric, _yes(r.gated), r.pages, _num(r.delta, sign=True)] for r in leaves.itertuples()
        ]
        out += _md_table(["stage", "part", "metric", "gated", "pages", "delta"], rows)
    changed = d.metrics[d.metrics["changed"].astype(bool)]
    if not changed.empty:
        changed = changed.sort_values("gated", ascending=False, kind="stable")
        out += ["", "## Per page", ""]
        rows = [
            [
                r.pair,
                r.stage,
                r.part,
                r.metric,
                _num(r.a),
                _num(r.b),
                _num(r.delta, sign=True),
                format_rel(r.rel_delta),
                _yes(r.gated),
            ]
            for r in changed.itertuples()
        ]
        out += _md_table(["page", "stage", "part", "metric", "A", "B", "delta", "rel delta", "gated"], rows)
    out += ["", "## Aten ops that appeared, disappeared or changed", ""]
    if d.ops.empty:
        out.append("None.")
    else:
        out.append("Shapes are the input shapes of the stage-root calls (module) that ran the op.")
        out.append("")
        head = ["page", "stage", "part", "op", "family", "status", "FLOPs A", "FLOPs B", "delta", "calls A", "calls B"]
        out += _md_table([*head, "shapes A", "shapes B"], [_op_cells(r) for r in d.ops.itertuples()])
    out += ["", "## Pages", ""]
    by = pd.Series([p.paired_by for p in d.pairs], dtype=object).value_counts()
    out.append(f"- paired: {len(d.pairs)}" + "".join(f"; by {k}: {v}" for k, v in by.items()))
    out.append(f"- only in A: {', '.join(d.unpaired_a) or 'none'}")
    out.append(f"- only in B: {', '.join(d.unpaired_b) or 'none'}")
    for u in d.unmeasured:
        out.append(f"- {u['pair']}: no trace on {u['side']} ({u['error']})")
    for c in d.coverage:
        out.append(f"- {c['pair']}: uncounted ops A {c['uncounted_a'] or 'none'}, B {c['uncounted_b'] or 'none'}")
    if not d.workload.empty:
        out += ["", "## Workload differences", ""]
        out += _md_table(["page", "field", "A", "B"], [[r.pair, r.field, r.a, r.b] for r in d.workload.itertuples()])
    if d.notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in d.notes)]
    return "\n".join(out) + "\n"


def print_diff(d: TraceDiff, console: Console | None = None, max_rows: int = 30) -> None:
    """Changed totals and ops as rich tables, then the verdict line."""
    console = console or Console()
    leaves = leaf_changes(d)
    if not leaves.empty:
        t = Table(title="stage totals that changed (B - A, summed over pages)", title_justify="left")
        for name in ("stage", "part", "metric", "gated", "pages", "delta"):
            t.add_column(name, justify="right" if name in ("pages", "delta") else "left", no_wrap=True)
        for r in leaves.head(max_rows).itertuples():
            t.add_row(r.stage, r.part, r.metric, _yes(r.gated), str(r.pages), _num(r.delta, sign=True))
        console.print(t)
    if not d.ops.empty:
        t = Table(title="aten ops that appeared, disappeared or changed", title_justify="left")
        t.add_column("page / stage / part")
        t.add_column("op")
        t.add_column("status")
        t.add_column("Δ FLOPs", justify="right", no_wrap=True)  # a wrapped number is unreadable
        t.add_column("calls A → B", justify="right", no_wrap=True)
        t.add_column("shapes A → B")
        for r in d.ops.head(max_rows).itertuples():
            calls = f"{_num(r.calls_a)} → {_num(r.calls_b)}"
            shapes = f"{format_shapes(r.shapes_a)} → {format_shapes(r.shapes_b)}"
            where = f"{r.pair} / {r.stage} / {r.part}" if len(d.pairs) > 1 else f"{r.stage} / {r.part}"
            t.add_row(escape(where), r.op, r.status, _num(r.delta_flops, sign=True), calls, escape(shapes))
        console.print(t)
        if len(d.ops) > max_rows:
            console.print(f"[dim]{len(d.ops) - max_rows} more op rows in --markdown / --json / --out[/]")
    for name, pages in (("A", d.unpaired_a), ("B", d.unpaired_b)):
        if pages:
            console.print(f"[yellow]only in {name}[/]: {escape(', '.join(pages))}", highlight=False)
    style = "bold red" if d.differs else "bold green"
    console.print(f"[{style}]{verdict_word(d)}[/]: {escape(headline(d))}", highlight=False)


def write_diff(d: TraceDiff, out_dir: Path) -> dict[str, Path]:
    """diff.md and diff.json in `out_dir`, each written to a temporary sibling and renamed into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"markdown": render_markdown(d), "json": json.dumps(diff_document(d), indent=1, allow_nan=False) + "\n"}
    staged: dict[str, Path] = {}
    try:
        for kind, text in texts.items():
            tmp = out_dir / f".{DIFF_FILES[kind]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
            staged[kind] = tmp
            with open(tmp, "x", encoding="utf-8") as fh:  # "x": never follow or reuse an existing name
                fh.write(text)
        for kind, tmp in staged.items():
            os.replace(tmp, out_dir / DIFF_FILES[kind])
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return {kind: out_dir / name for kind, name in DIFF_FILES.items()}


def _op_cells(r: Any) -> list[Any]:
    cells = [r.pair, r.stage, r.part, r.op, r.family, r.status, _num(r.flops_a), _num(r.flops_b)]
    cells += [_num(r.delta_flops, sign=True), _num(r.calls_a), _num(r.calls_b)]
    return [*cells, format_shapes(r.shapes_a), format_shapes(r.shapes_b)]


def _side(s: Side) -> dict[str, Any]:
    return {
        "path": s.label,
        "kind": s.kind,
        "command": s.command,
        "pages": len(s.samples),
        "environment": s.environment,
    }


def _holds(s: Side) -> str:
    if s.kind == "trace":
        return "one vendor trace"
    n = len(s.samples)
    return f"{s.command or 'run'}, {n} page{'' if n == 1 else 's'}"


def _num(v: Any, sign: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:+,}" if sign else f"{v:,}"
    return f"{v:+,.6g}" if sign else f"{v:,.6g}"


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
