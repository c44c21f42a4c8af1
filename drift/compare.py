"""Compares two measured sides (runs or traces): what a library, device, dtype or backend change did to the counts.

Pages pair up by page id, then by workload signature (geometry and token counts, not the knobs one compares);
two single traces always pair. Per pair: every stage x part x metric the trace leaves carry (`core.metrics.METRICS`
first, then any other numeric leaf field), A, B and the delta; every aten op (`op_breakdown`) that appeared,
disappeared or changed, with the stage-root input shapes of the calls that ran it; the workload and environment
fields that differ. A gated metric is one the vendor measures (`measured_metrics`); it must be identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.metrics import METRICS
from core.schema import ALL_VISION_STAGES, LM_STAGES, stage_parts
from drift.load import Sample, Side

PAIR_KEYS = (
    "base_size",
    "image_size",
    "crop_mode",
    "global_view_size",
    "crop_size",
    "w_crop",
    "h_crop",
    "n_crops",
    "n_image_tokens",
    "prompt_tokens",
    "decode_tokens",
    "batch",
)
KNOBS = ("mode", "dtype", "lm_head_scope", "impl", "attn_impl", "prompt_tokens", "decode_tokens")
METRIC_COLUMNS = ["pair", "stage", "part", "metric", "a", "b", "delta", "rel_delta", "gated", "changed"]
OP_COLUMNS = ["pair", "stage", "part", "op", "family", "status", "flops_a", "flops_b", "delta_flops"]
OP_COLUMNS += ["calls_a", "calls_b", "fields", "deltas", "shapes_a", "shapes_b"]
SHAPES_SHOWN = 3


@dataclass(frozen=True)
class Pair:
    """Two samples measured for the same page (or workload)."""

    key: str  # the page id, "A-id ~ B-id" when paired by signature, or "trace"
    a: Sample
    b: Sample
    paired_by: str  # "page id" | "workload signature" | "single traces"


@dataclass
class TraceDiff:
    """Everything `dsocr-diff` reports; tables are pandas frames with exact Python ints (object dtype)."""

    a: Side
    b: Side
    pairs: list[Pair]
    unpaired_a: list[str]
    unpaired_b: list[str]
    unmeasured: list[dict[str, Any]]  # {pair, side, error}: a pair where a side has no trace
    coverage: list[dict[str, Any]]  # {pair, uncounted_a, uncounted_b}: the counter's coverage changed
    metrics: pd.DataFrame
    ops: pd.DataFrame
    environment: pd.DataFrame  # key, a, b, changed
    workload: pd.DataFrame  # pair, field, a, b
    notes: list[str] = field(default_factory=list)

    @property
    def gated_changes(self) -> pd.DataFrame:
        m = self.metrics
        return m[m["gated"].astype(bool) & m["changed"].astype(bool)]

    @property
    def differs(self) -> bool:
        """True when a gated metric differs, a page has no counterpart or no trace, or coverage changed."""
        return bool(len(self.gated_changes) or self.unpaired_a or self.unpaired_b or self.unmeasured or self.coverage)

    @property
    def exit_code(self) -> int:
        return 1 if self.differs else 0


def diff_sides(a: Side, b: Side) -> TraceDiff:
    """Pair the samples of `a` and `b` and diff every pair."""
    pairs, rest_a, rest_b = pair_samples(a, b)
    metric_rows: list[dict[str, Any]] = []
    op_rows: list[dict[str, Any]] = []
    workload_rows: list[dict[str, Any]] = []
    unmeasured: list[dict[str, Any]] = []
    coverage: list[dict[str, Any]] = []
    notes: list[str] = []
    for pair in pairs:
        workload_rows += [{"pair": pair.key, **c} for c in _dict_changes(pair.a.workload, pair.b.workload, ("extra",))]
        ta, tb = pair.a.trace, pair.b.trace
        if ta is None or tb is None:
            side = "A and B" if ta is None and tb is None else ("A" if ta is None else "B")
            error = pair.a.error if ta is None else pair.b.error
            unmeasured.append({"pair": pair.key, "side": side, "error": error or "no trace"})
            continue
        metric_rows += metric_diff(pair.key, ta, tb)
        op_rows += op_diff(pair.key, ta, tb)
        ua, ub = sorted(ta["coverage"]["uncounted_ops"]), sorted(tb["coverage"]["uncounted_ops"])
        if ua != ub:
            coverage.append({"pair": pair.key, "uncounted_a": ua, "uncounted_b": ub})
        for name, t in (("A", ta), ("B", tb)):
            if not t["complete"]:
                notes.append(f"{pair.key}: {name}'s count is incomplete: {'; '.join(t['incomplete_reasons'])}")
    env_rows = [
        {
            "key": k,
            "a": a.environment.get(k),
            "b": b.environment.get(k),
            "changed": a.environment.get(k) != b.environment.get(k),
        }
        for k in _ordered_union(a.environment, b.environment)
    ]
    return TraceDiff(
        a=a,
        b=b,
        pairs=pairs,
        unpaired_a=[s.page_id or "trace" for s in rest_a],
        unpaired_b=[s.page_id or "trace" for s in rest_b],
        unmeasured=unmeasured,
        coverage=coverage,
        metrics=_frame(metric_rows, METRIC_COLUMNS),
        ops=_frame(op_rows, OP_COLUMNS),
        environment=_frame(env_rows, ["key", "a", "b", "changed"]),
        workload=_frame(workload_rows, ["pair", "field", "a", "b"]),
        notes=notes,
    )


def pair_samples(a: Side, b: Side) -> tuple[list[Pair], list[Sample], list[Sample]]:
    """(pairs, unpaired A samples, unpaired B samples): by page id first, then by workload signature."""
    if a.kind == b.kind == "trace":
        return [Pair("trace", a.samples[0], b.samples[0], "single traces")], [], []
    rest_b = list(b.samples)
    pairs: list[Pair] = []
    rest_a: list[Sample] = []
    for s in a.samples:
        match = next((t for t in rest_b if s.page_id is not None and t.page_id == s.page_id), None)
        if match is None:
            rest_a.append(s)
            continue
        rest_b.remove(match)
        pairs.append(Pair(s.page_id or "trace", s, match, "page id"))
    still_a: list[Sample] = []
    for s in rest_a:
        sig = pairing_signature(s.workload)
        match = next((t for t in rest_b if sig is not None and pairing_signature(t.workload) == sig), None)
        if match is None:
            still_a.append(s)
            continue
        rest_b.remove(match)
        pairs.append(Pair(f"{s.page_id or 'trace'} ~ {match.page_id or 'trace'}", s, match, "workload signature"))
    return pairs, still_a, rest_b


def pairing_signature(workload: dict[str, Any]) -> tuple[Any, ...] | None:
    """Geometry and token counts (what a page is), not dtype/scope/impl (what one compares); None if unknown."""
    if not workload or any(k not in workload for k in PAIR_KEYS):
        return None
    return tuple(workload[k] for k in PAIR_KEYS)


def metric_diff(key: str, ta: dict[str, Any], tb: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage x part x metric present (non-null) on either side."""
    gated = set(ta.get("measured_metrics") or []) | set(tb.get("measured_metrics") or [])
    rows = []
    for stage, part in _leaves(ta["stages"], tb["stages"]):
        la, lb = ta["stages"].get(stage, {}).get(part) or {}, tb["stages"].get(stage, {}).get(part) or {}
        for metric in _metric_names(la, lb):
            va, vb = _number(la.get(metric)), _number(lb.get(metric))
            if va is None and vb is None:
                continue
            delta = vb - va if va is not None and vb is not None else None
            rel = delta / va if delta is not None and va else None
            rows.append(
                {
                    "pair": key,
                    "stage": stage,
                    "part": part,
                    "metric": metric,
                    "a": va,
                    "b": vb,
                    "delta": delta,
                    "rel_delta": rel,
                    "gated": metric in gated,
                    "changed": va != vb,
                }
            )
    return rows


def op_diff(key: str, ta: dict[str, Any], tb: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per aten op of a stage x part that appeared, disappeared or changed any numeric field."""
    oa, ob = ta["op_breakdown"], tb["op_breakdown"]
    rows = []
    for stage, part in _leaves(oa, ob):
        ops_a, ops_b = oa.get(stage, {}).get(part) or {}, ob.get(stage, {}).get(part) or {}
        for op in sorted(set(ops_a) | set(ops_b)):
            ra, rb = ops_a.get(op), ops_b.get(op)
            fields = sorted(f for f in set(ra or {}) | set(rb or {}) if _field_changed(ra, rb, f))
            if ra is not None and rb is not None and not fields:
                continue
            status = "appeared" if ra is None else "disappeared" if rb is None else "changed"
            fa, fb = _number((ra or {}).get("flops")), _number((rb or {}).get("flops"))
            rows.append(
                {
                    "pair": key,
                    "stage": stage,
                    "part": part,
                    "op": op,
                    "family": (rb or ra or {}).get("family"),
                    "status": status,
                    "flops_a": fa,
                    "flops_b": fb,
                    "delta_flops": (fb or 0) - (fa or 0),
                    "calls_a": _number((ra or {}).get("calls")),
                    "calls_b": _number((rb or {}).get("calls")),
                    "fields": fields,
                    # per-op delta of every other measured metric the op cells carry (bytes, elementwise FLOPs)
                    "deltas": {
                        f: (_number((rb or {}).get(f)) or 0) - (_number((ra or {}).get(f)) or 0)
                        for f in fields
                        if f in METRICS
                    },
                    "shapes_a": call_shapes(ta, stage, part, op),
                    "shapes_b": call_shapes(tb, stage, part, op),
                }
            )
    return rows


def call_shapes(trace: dict[str, Any], stage: str, part: str, op: str) -> list[dict[str, Any]]:
    """The stage-root calls that ran `op`: [{module, input_shapes, calls}], distinct shapes in call order."""
    seen: dict[str, dict[str, Any]] = {}
    for rec in trace.get("calls") or []:
        if rec.get("stage") != stage or rec.get("part") != part or op not in (rec.get("ops") or {}):
            continue
        k = json.dumps([rec.get("module"), rec.get("input_shapes")])
        entry = seen.setdefault(k, {"module": rec.get("module"), "input_shapes": rec.get("input_shapes"), "calls": 0})
        entry["calls"] += 1
    return list(seen.values())


def format_shapes(shapes: list[dict[str, Any]], limit: int = SHAPES_SHOWN) -> str:
    """'lm_head(arg0=[1, 79, 1280])', distinct shapes joined, '+n more' past `limit`."""
    parts = []
    for entry in shapes[:limit]:
        args = ", ".join(f"{name}={list(shape)}" for name, shape in entry.get("input_shapes") or [])
        parts.append(f"{entry.get('module')}({args})" + (f" x{entry['calls']}" if entry["calls"] > 1 else ""))
    if len(shapes) > limit:
        parts.append(f"+{len(shapes) - limit} more")
    return "; ".join(parts) or "-"


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Object dtype throughout: FLOP counts stay exact Python ints, nulls stay None (never NaN)."""
    return pd.DataFrame([[r.get(c) for c in columns] for r in rows], columns=columns, dtype=object)


def _leaves(sa: dict[str, Any], sb: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage, part) keys holding a dict on either side, schema order first; `steps` lists are skipped."""
    out = []
    schema_stages = ALL_VISION_STAGES + LM_STAGES  # every family's stages (a run holds one family's)
    for stage in _ordered_union(sa, sb, first=schema_stages):
        pa, pb = sa.get(stage) or {}, sb.get(stage) or {}
        known = stage_parts(stage) if stage in schema_stages else ()
        for part in _ordered_union(pa, pb, first=known):
            if isinstance(pa.get(part), dict) or isinstance(pb.get(part), dict):
                out.append((stage, part))
    return out


def _metric_names(la: dict[str, Any], lb: dict[str, Any]) -> list[str]:
    numeric = [k for k in _ordered_union(la, lb) if _number(la.get(k)) is not None or _number(lb.get(k)) is not None]
    return [m for m in METRICS if m in numeric] + [m for m in numeric if m not in METRICS]


def _ordered_union(a: Iterable[str], b: Iterable[str], first: Iterable[str] = ()) -> list[str]:
    keys = list(dict.fromkeys([*a, *b]))
    head = [k for k in first if k in keys]
    return head + [k for k in keys if k not in head]


def _number(v: Any) -> int | float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _field_changed(ra: dict[str, Any] | None, rb: dict[str, Any] | None, f: str) -> bool:
    va, vb = (ra or {}).get(f), (rb or {}).get(f)
    return va != vb and (_number(va) is not None or _number(vb) is not None)


def _dict_changes(a: dict[str, Any], b: dict[str, Any], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {"field": k, "a": a.get(k), "b": b.get(k)}
        for k in _ordered_union(a, b)
        if k not in skip and a.get(k) != b.get(k)
    ]
