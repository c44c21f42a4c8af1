"""The one-line verdict of a diff and the group-bys behind it (per stage x part x metric, per op).

The headline is what a drift job prints: "transformers 5.23.0 -> 5.24.0: stage prefill/decoder changed by
+N FLOPs (tensor_flops; ops: ...)" or "...: no change". Every figure is a group-by of the diff's frames.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from drift.compare import KNOBS, TraceDiff

HEADLINE_ITEMS = 5
HEADLINE_OPS = 3
_BRIEF_KEYS = ("transformers", "torch", "device", "dtype", "backend")
_NAMED = ("transformers", "torch")


def leaf_changes(d: TraceDiff) -> pd.DataFrame:
    """Changed stage x part x metric summed over pairs (delta None where a side lacks the metric)."""
    m = d.metrics[d.metrics["changed"].astype(bool)]
    cols = ["stage", "part", "metric", "gated", "pages", "delta"]
    if m.empty:
        return pd.DataFrame(columns=cols, dtype=object)
    g = m.groupby(["stage", "part", "metric"], sort=False).agg(
        gated=("gated", "first"), pages=("pair", "nunique"), delta=("delta", _exact_sum)
    )
    return g.reset_index()[cols].astype(object)


def op_changes(d: TraceDiff) -> pd.DataFrame:
    """Per stage x part x op over pairs: status (joined), delta_flops, calls A and B, the other metrics' deltas
    (summed)."""
    cols = ["stage", "part", "op", "status", "delta_flops", "calls_a", "calls_b", "deltas"]
    if d.ops.empty:
        return pd.DataFrame(columns=cols, dtype=object)
    g = d.ops.groupby(["stage", "part", "op"], sort=False).agg(
        status=("status", lambda s: "/".join(dict.fromkeys(s))),
        delta_flops=("delta_flops", _exact_sum),
        calls_a=("calls_a", _exact_sum),
        calls_b=("calls_b", _exact_sum),
        deltas=("deltas", _sum_dicts),
    )
    return g.reset_index()[cols].astype(object)


def _sum_dicts(col: pd.Series) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for d in col:
        for k, v in (d if isinstance(d, dict) else {}).items():
            out[k] = out.get(k, 0) + v
    return out


def environment_changes(d: TraceDiff) -> list[str]:
    """'transformers 5.23.0 -> 5.24.0', ... then workload knobs that differ ('lm_head_scope all -> last')."""
    out = []
    for row in d.environment[d.environment["changed"].astype(bool)].itertuples(index=False):
        out.append(f"{row.key} {_short(row.a)} -> {_short(row.b)}")
    knobs = d.workload[d.workload["field"].isin(KNOBS)] if not d.workload.empty else d.workload
    for row in knobs.itertuples(index=False):
        text = f"{row.field} {_short(row.a)} -> {_short(row.b)}"
        if text not in out:
            out.append(text)
    return out


def headline(d: TraceDiff) -> str:
    """What changed in the environment, then what that did to the counts, in one line."""
    changes = environment_changes(d)
    if changes:
        more = len(changes) - HEADLINE_ITEMS
        lead = ", ".join(changes[:HEADLINE_ITEMS]) + (f", +{more} more" if more > 0 else "")
    else:
        env = d.a.environment
        brief = ", ".join(f"{k} {env[k]}" if k in _NAMED else env[k] for k in _BRIEF_KEYS if k in env)
        lead = f"same environment ({brief})" if brief else "same environment"
    leaves = leaf_changes(d)
    ops = op_changes(d)
    gated = leaves[leaves["gated"].astype(bool)]
    items = [_leaf_text(r, ops, len(d.pairs)) for r in gated.itertuples(index=False)]
    if items:
        more = len(items) - HEADLINE_ITEMS
        body = "; ".join(items[:HEADLINE_ITEMS]) + (f"; +{more} more" if more > 0 else "")
    else:
        n = len(d.pairs) - len(d.unmeasured)
        body = "no change" if d.a.kind == d.b.kind == "trace" else f"no change on {n} paired page{_s(n)}"
        other = [
            f"{r.stage}/{r.part} {r.metric}" for r in leaves[~leaves["gated"].astype(bool)].itertuples(index=False)
        ]
        other += [_op_text(r) for r in ops.head(HEADLINE_OPS).itertuples(index=False)]
        if other:
            body += " in gated metrics; also changed: " + ", ".join(other)
    return f"{lead}: {body}{_tail(d)}"


def verdict_word(d: TraceDiff) -> str:
    return "DIFFERENT" if d.differs else "SAME"


def _leaf_text(row: Any, ops: pd.DataFrame, n_pairs: int) -> str:
    amount = "appeared or vanished" if row.delta is None else f"changed by {row.delta:+,}{_unit(row.metric)}"
    detail = [row.metric] + ([f"{row.pages} of {n_pairs} pages"] if n_pairs > 1 else [])
    mine = ops[(ops["stage"] == row.stage) & (ops["part"] == row.part)]
    size = [abs(_op_delta(r, row.metric) or 0) for r in mine.itertuples(index=False)]
    if row.metric != "tensor_flops":  # ops whose own figure changed (a high-water mark has no per-op figure)
        mine = mine[[bool(x) for x in size]]
        size = [x for x in size if x]
    if not mine.empty:
        mine = mine.assign(_abs=size).sort_values("_abs", ascending=False)
        detail.append(
            "ops: " + ", ".join(_op_text(r, row.metric) for r in mine.head(HEADLINE_OPS).itertuples(index=False))
        )
    return f"stage {row.stage}/{row.part} {amount} ({'; '.join(detail)})"


def _op_delta(r: Any, metric: str) -> int | float | None:
    """An op row's change in `metric` (tensor FLOPs are its ``delta_flops``)."""
    if metric == "tensor_flops":
        return r.delta_flops
    deltas = getattr(r, "deltas", None)
    return deltas.get(metric) if isinstance(deltas, dict) else None


def _op_text(r: Any, metric: str = "tensor_flops") -> str:
    delta = _op_delta(r, metric) or 0
    unit = _unit(metric)
    if r.status == "appeared":
        return f"+{r.op} (new, {delta:,}{unit})"
    if r.status == "disappeared":
        return f"-{r.op} (gone, {-delta:,}{unit})"
    if delta:
        return f"{r.op} {delta:+,}"
    return f"{r.op} calls {_int(r.calls_a)} -> {_int(r.calls_b)}"


def _int(v: Any) -> Any:
    """Call counts come back from the frame as floats where one side is missing: print 48, not 48.0."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _tail(d: TraceDiff) -> str:
    parts = []
    for name, pages in (("A", d.unpaired_a), ("B", d.unpaired_b)):
        if pages:
            more = f", +{len(pages) - 3} more" if len(pages) > 3 else ""
            parts.append(f"{len(pages)} page{_s(len(pages))} only in {name} ({', '.join(pages[:3])}{more})")
    if d.unmeasured:
        parts.append(f"{len(d.unmeasured)} page{_s(len(d.unmeasured))} without a trace on one side")
    for c in d.coverage:
        new, gone = (
            sorted(set(c["uncounted_b"]) - set(c["uncounted_a"])),
            sorted(set(c["uncounted_a"]) - set(c["uncounted_b"])),
        )
        parts.append(f"{c['pair']}: uncounted ops " + ", ".join([*(f"+{o}" for o in new), *(f"-{o}" for o in gone)]))
    return "".join(f"; {p}" for p in parts)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _unit(metric: str) -> str:
    return " FLOPs" if metric.endswith("flops") else " bytes" if metric.endswith("bytes") else ""


def _short(v: Any) -> str:
    """Hashes shortened to 12 hex digits; None as '-'."""
    if v is None:
        return "-"
    s = str(v)
    return s[:12] + "…" if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


def _exact_sum(values: pd.Series) -> int | float | None:
    """Sum of Python numbers (exact for ints); None when any value is None."""
    vals = list(values)
    return None if any(v is None for v in vals) else sum(vals)
