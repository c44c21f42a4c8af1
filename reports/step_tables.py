"""Decode steps in report.json: each distinct step once per run, a page's steps as runs of rows of that table.

A decode step at batch 1 is a function of the key count (`vendor_shim.decode_steps`), so pages that decode past
the same lengths carry equal steps; written out per page, a run of 1,355 pages at ~2,000 tokens would be gigabytes
of repeats.  The encoding is lossless by value, not by assumption: a row is shared only when its JSON is equal,
and `expand_steps` gives back exactly the lists `table_steps` took (`tests/test_step_tables.py`).

Tabled per page: ``analytic.stages.decode.steps``, ``trace.stages.decode.steps`` and the trace's decode calls
(``trace.calls`` entries of stage ``decode``, grouped by step, their ``index``/``stage``/``step`` taken out: those
are the page's, the rest is the step's).  A page's list becomes ``{"table": NAME, "runs": [[first row, rows],
...]}``; the run's tables are ``step_tables: {NAME: [row, ...]}``.
"""

from __future__ import annotations

import json
from typing import Any

TABLES = ("analytic_steps", "trace_steps", "decode_calls")
_PAGE_KEYS = ("index", "stage", "step")  # what a decode call's record owes to the page it ran in


class StepTableError(ValueError):
    """A tabled report whose tables and runs do not fit together (a damaged report.json)."""


class _Table:
    """Distinct rows in first-seen order; equal JSON is one row."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self._index: dict[str, int] = {}
        self._by_id: dict[int, int] = {}  # the same object is the same row (pages share the analytic's steps)
        self._by_fields: dict[tuple[Any, ...], int] = {}  # the same fields, lists and dicts by identity, too

    def runs(self, items: list[Any], held: bool = True) -> list[list[int]]:
        """``items`` as [first, count] runs of consecutive rows (a page's steps are consecutive key counts).
        ``held``: the items live as long as this table (they are the document's), so an id names one object."""
        runs: list[list[int]] = []
        for item in items:
            row = self._by_id.get(id(item)) if held else None
            fields = None if held else _fields(item)
            if row is None and fields is not None:
                row = self._by_fields.get(fields)
            if row is None:
                key = json.dumps(item, separators=(",", ":"), default=repr)  # any value: rows are made JSON later
                row = self._index.get(key)
                if row is None:
                    row = self._index[key] = len(self.rows)
                    self.rows.append(item)
                if held:
                    self._by_id[id(item)] = row
                elif fields is not None:
                    self._by_fields[fields] = row
            if runs and runs[-1][0] + runs[-1][1] == row:
                runs[-1][1] += 1
            else:
                runs.append([row, 1])
        return runs


_SCALARS = (str, int, bool, type(None))


def _fields(group: Any) -> tuple[Any, ...] | None:
    """A decode call group (a list of call dicts) as a key that is cheap to make: each field's type and value, its
    lists and dicts by identity (pages given one stored step share its calls' ``ops`` and ``input_shapes``); None
    for anything else (the JSON key then decides).  Equal keys are equal JSON while the objects live: the tabled
    document holds them for as long as the table runs."""
    if not isinstance(group, list):
        return None
    out: list[Any] = []
    for call in group:
        if not isinstance(call, dict):
            return None
        for k, v in call.items():
            t = type(v)
            if t in _SCALARS:
                out.append((k, t, v))
            elif t is float:
                out.append((k, t, repr(v)))  # -0.0 == 0.0, but their JSON differs
            elif t is list or t is dict:
                out.append((k, t, id(v)))
            else:
                return None
        out.append(None)  # a call ends
    return tuple(out)


def table_steps(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a run document, `reports.document`) with its pages' decode steps tabled; ``doc`` is not changed
    (the pages holding steps are shallow-copied down to the tabled lists)."""
    tables = {name: _Table() for name in TABLES}
    pages = [_tabled_page(p, tables) for p in doc.get("pages") or []]
    return {**doc, "pages": pages, "step_tables": {name: t.rows for name, t in tables.items()}}


def _tabled_page(page: dict[str, Any], tables: dict[str, _Table]) -> dict[str, Any]:
    out = dict(page)
    for side, name in (("analytic", "analytic_steps"), ("trace", "trace_steps")):
        steps = _decode(page.get(side)).get("steps")
        if isinstance(steps, list):
            out[side] = _with_steps(page[side], {"table": name, "runs": tables[name].runs(steps)})
    trace = out.get("trace")
    groups = _decode_call_groups(trace.get("calls")) if isinstance(trace, dict) else None
    if groups is not None:
        head, steps = groups
        out["trace"] = {
            **trace,
            "calls": head,
            "decode_calls": {"table": "decode_calls", "runs": tables["decode_calls"].runs(steps, held=False)},
        }
    return out


def _decode(side: Any) -> dict[str, Any]:
    stages = side.get("stages") if isinstance(side, dict) else None
    decode = stages.get("decode") if isinstance(stages, dict) else None
    return decode if isinstance(decode, dict) else {}


def _with_steps(side: dict[str, Any], steps: Any) -> dict[str, Any]:
    stages = side["stages"]
    return {**side, "stages": {**stages, "decode": {**stages["decode"], "steps": steps}}}


def _decode_call_groups(calls: Any) -> tuple[list[Any], list[list[dict[str, Any]]]] | None:
    """(the calls before decode, decode's calls per step without their page keys), when the decode calls are the
    list's tail in step order 1, 2, ... with ``index`` their position; else None (the calls stay as they are)."""
    if not isinstance(calls, list):
        return None
    first = next((i for i, c in enumerate(calls) if isinstance(c, dict) and c.get("stage") == "decode"), len(calls))
    groups: list[list[dict[str, Any]]] = []
    for i, c in enumerate(calls[first:], start=first):
        if not (isinstance(c, dict) and c.get("stage") == "decode" and c.get("index") == i):
            return None
        step = c.get("step")
        if step == len(groups) + 1 and not isinstance(step, bool):
            groups.append([])
        elif step != len(groups) or not groups:
            return None
        row = dict(c)  # a copy less the page's keys (faster than filtering every key: a run has millions)
        for k in _PAGE_KEYS:
            del row[k]
        groups[-1].append(row)
    return (calls[:first], groups) if groups else None


def is_tabled(doc: Any) -> bool:
    return isinstance(doc, dict) and "step_tables" in doc


def expand_steps(doc: dict[str, Any]) -> dict[str, Any]:
    """The run document `table_steps` was given (a new dict; ``doc`` is not changed).  A table, run or row that
    does not fit is a StepTableError naming the page."""
    tables = doc.get("step_tables")
    if not isinstance(tables, dict) or any(not isinstance(tables.get(n), list) for n in TABLES):
        raise StepTableError(f"step_tables must hold the lists {', '.join(TABLES)}")
    pages = []
    for i, page in enumerate(doc.get("pages") or []):
        try:
            pages.append(_expanded_page(page, tables))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StepTableError(
                f"pages[{i}]: its tabled decode steps do not fit the run's step_tables ({exc})"
            ) from None
    return {**{k: v for k, v in doc.items() if k != "step_tables"}, "pages": pages}


def _rows(ref: Any, name: str, tables: dict[str, list[Any]]) -> list[Any]:
    if not isinstance(ref, dict) or ref.get("table") != name or not isinstance(ref.get("runs"), list):
        raise ValueError(f"expected a reference into table {name}")
    table, out = tables[name], []
    for first, count in ref["runs"]:
        if not (isinstance(first, int) and isinstance(count, int) and first >= 0 and count > 0):
            raise ValueError(f"bad run [{first}, {count}]")
        if first + count > len(table):
            raise IndexError(f"run [{first}, {count}] past the {len(table)} rows of {name}")
        out.extend(table[first : first + count])
    return out


def _expanded_page(page: dict[str, Any], tables: dict[str, list[Any]]) -> dict[str, Any]:
    out = dict(page)
    for side, name in (("analytic", "analytic_steps"), ("trace", "trace_steps")):
        steps = _decode(page.get(side)).get("steps")
        if isinstance(steps, dict):
            out[side] = _with_steps(page[side], _rows(steps, name, tables))
    trace = out.get("trace")
    if isinstance(trace, dict) and "decode_calls" in trace:
        calls = list(trace["calls"])
        for step, group in enumerate(_rows(trace["decode_calls"], "decode_calls", tables), start=1):
            for c in group:
                calls.append({"index": len(calls), "stage": "decode", "step": step, **c})
        out["trace"] = {k: v for k, v in trace.items() if k != "decode_calls"} | {"calls": calls}
    return out
