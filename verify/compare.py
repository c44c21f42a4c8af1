"""Per-page comparison of the analytic estimate with the vendor trace.

Only `tensor_flops` is gated today; the other metrics are reported with no
measured counterpart (vendor = None) until the shim measures them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from analytic.schema import METRICS, OP_FAMILIES, leaf_paths
from reports.model import ComparisonRow

GATED_METRICS = ("tensor_flops",)
DEFAULT_TOLERANCE = 0.01
MAX_TOLERANCE = 0.05


class ToleranceError(ValueError):
    """A tolerance outside what the gate allows."""


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerance per stage for gated metrics (default 1%, at most 5%)."""

    default: float = DEFAULT_TOLERANCE
    per_stage: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, tol in {"default": self.default, **self.per_stage}.items():
            if not 0.0 <= tol <= MAX_TOLERANCE:
                raise ToleranceError(
                    f"tolerance {tol} for {name} is outside [0, {MAX_TOLERANCE}]: give a fraction, e.g. 0.01 for 1%"
                )

    def for_stage(self, stage: str) -> float:
        return self.per_stage.get(stage, self.default)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "per_stage": dict(self.per_stage)}


def parse_tolerances(default: float, items: list[str]) -> Tolerances:
    """`--tolerance sam=0.02` items -> Tolerances; values may be fractions or 'N%'."""
    per_stage: dict[str, float] = {}
    valid = {s for s, _ in leaf_paths()}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or stage not in valid:
            raise ToleranceError(
                f"bad --tolerance {item!r}: use STAGE=FRACTION with STAGE in {', '.join(sorted(valid))}"
            )
        per_stage[stage] = _fraction(value, item)
    return Tolerances(default=default, per_stage=per_stage)


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
) -> list[ComparisonRow]:
    """One row per stage x part x metric; gated metrics carry tolerance and verdict."""
    rows: list[ComparisonRow] = []
    for stage, part in leaf_paths(stages):
        a_leaf = analytic_stages[stage][part]
        v_leaf = vendor_stages.get(stage, {}).get(part)
        if v_leaf is None:
            raise KeyError(f"vendor trace has no stages.{stage}.{part}: the trace does not match the schema")
        for metric in METRICS:
            a_val = a_leaf[metric]
            if metric not in GATED_METRICS:
                rows.append(ComparisonRow(page_id, stage, part, metric, None, a_val, None, None, None, None))
                continue
            v_val = v_leaf[metric]
            tol = tolerances.for_stage(stage)
            rel = relative_delta(v_val, a_val)
            passed = rel <= tol
            fam = None
            note = ""
            if not passed:
                if vendor_families and analytic_families:
                    fam = gap_family(
                        vendor_families.get(stage, {}).get(part, {}), analytic_families.get(stage, {}).get(part, {})
                    )
                note = "zero on one side only" if (v_val == 0) != (a_val == 0) else ""
            rows.append(
                ComparisonRow(page_id, stage, part, metric, v_val, a_val, a_val - v_val, rel, tol, passed, fam, note)
            )
    return rows


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
