"""The metrics, each declared once: name, unit, how a stage's figure follows from its parts, the gate's default
tolerance, and whether the meter charges it op by op.

Every other list of metrics (the analytic `Cost` fields, the trace's stage leaves, the comparator's tolerances,
the report columns, the meter's per-op vector) is derived from `METRIC_TABLE`; adding a metric is one entry here
plus its formulas (the meter's op rule and the analytic layers' term).  Definitions: docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

AGGREGATIONS = ("sum", "max")
UNITS = ("FLOP", "B")


@dataclass(frozen=True)
class Metric:
    """One measured and modeled quantity."""

    name: str
    unit: str  # "FLOP" or "B" (bytes): picks the report's units
    aggregation: str  # "sum": work adds up over steps, calls and pages; "max": a high-water mark does not
    tolerance: float  # the gate's default relative tolerance
    per_op: bool  # charged op by op by the meter (peak_bytes comes from tensor liveness instead)
    what: str  # one line for --help and the reports

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric {self.name}: unit in {UNITS}, aggregation in {AGGREGATIONS}")


# Default tolerances (issue 11): work counts are exact up to the conventions, bytes follow the code's copies, a
# high-water mark depends on when the allocator's tensors die.
METRIC_TABLE: tuple[Metric, ...] = (
    Metric("tensor_flops", "FLOP", "sum", 0.01, True, "matmul, convolution and attention FLOPs (2 per multiply-add)"),
    Metric("elementwise_flops", "FLOP", "sum", 0.02, True, "norms, activations, softmax, RoPE, residual adds"),
    Metric("io_bytes", "B", "sum", 0.05, True, "tensor bytes every op reads and writes"),
    Metric("weight_bytes", "B", "sum", 0.05, True, "the part of the reads that falls on parameters and buffers"),
    Metric("activation_bytes", "B", "sum", 0.05, True, "bytes every op writes"),
    Metric("kv_cache_bytes", "B", "sum", 0.05, True, "K/V cache reads by the decoder's attention"),
    Metric("peak_bytes", "B", "max", 0.10, False, "high-water mark of live tensor bytes above the stage's entry"),
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRIC_TABLE}

METRICS: tuple[str, ...] = tuple(METRIC_BY_NAME)
PEAK_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.aggregation == "max")
BYTE_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.unit == "B")
OP_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.per_op)
DEFAULT_TOLERANCES: dict[str, float] = {m.name: m.tolerance for m in METRIC_TABLE}


def combine(metric: str, values: list[int] | tuple[int, ...]) -> int:
    """Stage figure from per-step figures: the maximum for high-water marks, the sum for everything else (a
    derived count such as the analytic model's ``causal_tensor_flops`` adds up too)."""
    return max(values, default=0) if metric in PEAK_METRICS else sum(values)
