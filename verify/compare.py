"""Per-page comparison of the analytic estimate with the vendor trace, every metric.

A metric is gated when the vendor measured it and the implementation profile models it at aten-op
level (``ImplProfile.modeled_metrics``); any other metric is reported with both figures, no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.metrics import DEFAULT_TOLERANCES, METRICS
from core.schema import OP_FAMILIES, leaf_paths
from reports.model import ComparisonRow

DEFAULT_TOLERANCE = DEFAULT_TOLERANCES["tensor_flops"]
MAX_TOLERANCE = 0.25


class ToleranceError(ValueError):
    """A tolerance outside what the gate allows."""


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerance per metric, overridable per stage, per metric or per stage x metric (at most 25 %).

    ``default`` is the tensor-FLOP default (``--tolerance-default``); ``overrides`` maps ``STAGE``,
    ``METRIC`` or ``STAGE.METRIC`` to a fraction, the most specific winning."""

    default: float = DEFAULT_TOLERANCE
    overrides: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, tol in {"default": self.default, **self.overrides}.items():
            if not 0.0 <= tol <= MAX_TOLERANCE:
                raise ToleranceError(
                    f"tolerance {tol} for {name} is outside [0, {MAX_TOLERANCE}]: give a fraction, e.g. 0.01 for 1%"
                )

    def for_leaf(self, stage: str, metric: str) -> float:
        for key in (f"{stage}.{metric}", metric, stage):
            if key in self.overrides:
                return self.overrides[key]
        return self.default if metric == "tensor_flops" else DEFAULT_TOLERANCES[metric]

    def to_dict(self) -> dict[str, Any]:
        defaults = {**DEFAULT_TOLERANCES, "tensor_flops": self.default}
        return {"default": self.default, "per_metric": defaults, "overrides": dict(self.overrides)}


def parse_tolerances(default: float, items: list[str], run_stages: tuple[str, ...] | None = None) -> Tolerances:
    """`--tolerance` items (``sam=0.02``, ``io_bytes=0.1``, ``decode.peak_bytes=15%``) -> Tolerances.

    `run_stages`: the stages the run verifies (default: every DeepSeek-OCR stage); a tolerance for any other
    stage would never apply, so it is refused like a misspelt one.
    """
    stages = {s for s, _ in (leaf_paths(run_stages) if run_stages else leaf_paths())}
    valid = stages | set(METRICS) | {f"{s}.{m}" for s in stages for m in METRICS}
    overrides: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in valid:
            raise ToleranceError(
                f"bad --tolerance {item!r}: use STAGE=FRAC, METRIC=FRAC or STAGE.METRIC=FRAC "
                f"(stages {', '.join(sorted(stages))}; metrics {', '.join(METRICS)})"
            )
        overrides[key] = _fraction(value, item)
    return Tolerances(default=default, overrides=overrides)


def _fraction(value: str, item: str) -> float:
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ToleranceError(
            f"bad tolerance value in {item!r}: use a fraction like 0.01 or a percent like 1%"
        ) from None


def relative_delta(vendor: float, analytic: float) -> float:
    """|analytic - vendor| relative to the vendor figure; 0 when both are 0, inf when only vendor is 0."""
    if vendor == analytic:
        return 0.0
    if vendor == 0:
        return float("inf")
    return abs(analytic - vendor) / abs(vendor)


def gap_family(vendor_families: Mapping[str, float], analytic_families: Mapping[str, float]) -> str | None:
    """The op family whose vendor-minus-analytic difference is largest in magnitude.

    SDPA run by its math backend (always on the meta device) executes as aten.bmm.  When only one side
    has sdpa FLOPs, sdpa is folded into bmm on both sides, so one attention labelled two ways is no gap;
    a gap that is still in that bucket is named as the vendor labelled it.
    """
    v, a = dict(vendor_families), dict(analytic_families)
    folded = (v.get("sdpa", 0) > 0) != (a.get("sdpa", 0) > 0)
    if folded:
        for fams in (v, a):
            fams["bmm"] = fams.get("bmm", 0) + fams.pop("sdpa", 0)
    best, best_gap = None, 0.0
    for fam in OP_FAMILIES:
        gap = abs(v.get(fam, 0) - a.get(fam, 0))
        if gap > best_gap:
            best, best_gap = fam, gap
    if folded and best == "bmm" and vendor_families.get("sdpa", 0) > 0:
        return "sdpa"
    return best


def compare_stages(
    page_id: str,
    vendor_stages: Mapping[str, Any],
    analytic_stages: Mapping[str, Any],
    tolerances: Tolerances,
    stages: tuple[str, ...],
    vendor_families: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    analytic_families: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    gated: tuple[str, ...] = ("tensor_flops",),
    vendor_ops: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]] | None = None,
) -> list[ComparisonRow]:
    """One row per stage x part x metric.  A metric in ``gated`` (``METRIC`` everywhere, or ``STAGE.METRIC``) carries
    its tolerance and a verdict; the others
    (the analytic profile does not model them yet, or the vendor did not measure them) are reported only.
    ``vendor_ops``: the trace's per-op breakdown, which names the ops behind a failing non-FLOP row."""
    rows: list[ComparisonRow] = []
    for stage, part in leaf_paths(stages):
        a_leaf = analytic_stages[stage][part]
        v_leaf = vendor_stages.get(stage, {}).get(part)
        if v_leaf is None:
            raise KeyError(f"vendor trace has no stages.{stage}.{part}: the trace does not match the schema")
        for metric in METRICS:
            a_val = a_leaf[metric]
            v_val = v_leaf.get(metric)
            if v_val is None:
                rows.append(ComparisonRow(page_id, stage, part, metric, None, a_val, None, None, None, None))
                continue
            rel = relative_delta(v_val, a_val)
            if metric not in gated and f"{stage}.{metric}" not in gated:
                rows.append(ComparisonRow(page_id, stage, part, metric, v_val, a_val, a_val - v_val, rel, None, None))
                continue
            tol = tolerances.for_leaf(stage, metric)
            passed = rel <= tol
            fam = None
            note = ""
            if not passed:
                if metric == "tensor_flops" and vendor_families and analytic_families:
                    fam = gap_family(
                        vendor_families.get(stage, {}).get(part, {}), analytic_families.get(stage, {}).get(part, {})
                    )
                elif vendor_ops:
                    note = top_ops(vendor_ops.get(stage, {}).get(part, {}), metric)
                if (v_val == 0) != (a_val == 0):
                    note = "zero on one side only" + (f"; {note}" if note else "")
            rows.append(
                ComparisonRow(page_id, stage, part, metric, v_val, a_val, a_val - v_val, rel, tol, passed, fam, note)
            )
    return rows


def top_ops(ops: Mapping[str, Mapping[str, float]], metric: str, n: int = 3) -> str:
    """'vendor ops: aten.clone 344e6, aten.add 206e6' — where a measured figure comes from."""
    key = "flops" if metric == "tensor_flops" else metric
    ranked = sorted(((cell.get(key) or 0, op) for op, cell in ops.items()), reverse=True)[:n]
    return "vendor ops: " + ", ".join(f"{op.removesuffix('.default')} {v:.3g}" for v, op in ranked if v)


# workload field -> the name the vendor trace records it under (decode steps run are `decode_forwards`)
RECEIVED_FIELDS = {
    "w_crop": "w_crop",
    "h_crop": "h_crop",
    "n_crops": "n_crops",
    "n_image_tokens": "n_image_tokens",
    "prefill_len": "prefill_len",
    "decode_tokens": "decode_forwards",
}


def received_mismatches(workload: Mapping[str, Any], received: Mapping[str, Any]) -> list[str]:
    """Fields where what the vendor model received differs from the workload.

    The harness already refuses a mismatch when it runs; this second look is for traces that come from the
    cache or a worker process, which the verifier did not watch being made."""
    out = []
    for key, got in RECEIVED_FIELDS.items():
        if got in received and key in workload and received[got] != workload[key]:
            out.append(f"{key}: workload {workload[key]} vs vendor {received[got]}")
    return out
