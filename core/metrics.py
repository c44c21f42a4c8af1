"""The metrics, each declared once: name, unit, how a stage's figure follows from its parts, the gate's default
tolerance, and how one op contributes to it.

Both sides observe the same *traffic* per op (`TRAFFIC`): its tensor and elementwise FLOPs, the bytes it reads
(weights included) and writes, the part of the reads on parameters and buffers, and the reads of the decoder's
K/V cache.  A per-op metric is a linear function of that traffic (``Metric.of``): the vendor meter charges each
op's traffic (vendor_shim/op_meter.py), the analytic layers accumulate theirs (analytic/costs.py `Cost`), and
each side's metric values come from here.  Every other list of metrics (trace leaves, comparator tolerances, report
columns) is derived from `METRIC_TABLE`: a new metric over the observed traffic is one entry here (plus its name in
a profile's ``modeled_metrics`` to gate it).  Definitions: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

AGGREGATIONS = ("sum", "max")
UNITS = ("FLOP", "B")
# what one op does, as both sides observe it (each a sum over the ops of a leaf)
TRAFFIC = ("tensor_flops", "elementwise_flops", "read_bytes", "write_bytes", "weight_bytes", "kv_cache_bytes")


@dataclass(frozen=True)
class Metric:
    """One measured and modeled quantity."""

    name: str
    unit: str  # "FLOP" or "B" (bytes): picks the report's units
    aggregation: str  # "sum": work adds up over steps, calls and pages; "max": a high-water mark does not
    tolerance: float  # the gate's default relative tolerance
    of: Callable[[Mapping[str, int]], int] | None  # its value from a TRAFFIC mapping (linear); None: from liveness
    what: str  # one line for --help and the reports

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric {self.name}: unit in {UNITS}, aggregation in {AGGREGATIONS}")
        if self.of is not None and self.aggregation != "sum":
            raise ValueError(f"metric {self.name}: a metric of the ops' traffic adds up over them (aggregation sum)")

    @property
    def per_op(self) -> bool:
        """Charged op by op (peak_bytes comes from tensor liveness instead)."""
        return self.of is not None


# Default tolerances (issue 11): work counts are exact up to the conventions, bytes follow the code's copies, a
# high-water mark depends on when the allocator's tensors die.
METRIC_TABLE: tuple[Metric, ...] = (
    Metric("tensor_flops", "FLOP", "sum", 0.01, lambda t: t["tensor_flops"], "matmul, convolution and attention FLOPs"),
    Metric("elementwise_flops", "FLOP", "sum", 0.02, lambda t: t["elementwise_flops"], "norms, activations, softmax"),
    Metric("io_bytes", "B", "sum", 0.05, lambda t: t["read_bytes"] + t["write_bytes"], "bytes read and written"),
    Metric("weight_bytes", "B", "sum", 0.05, lambda t: t["weight_bytes"], "the reads of parameters and buffers"),
    Metric("activation_bytes", "B", "sum", 0.05, lambda t: t["write_bytes"], "bytes every op writes"),
    Metric("kv_cache_bytes", "B", "sum", 0.05, lambda t: t["kv_cache_bytes"], "K/V cache reads by the attention"),
    Metric("peak_bytes", "B", "max", 0.10, None, "high-water mark of live tensor bytes above the stage's entry"),
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRIC_TABLE}

METRICS: tuple[str, ...] = tuple(METRIC_BY_NAME)
PEAK_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.aggregation == "max")
BYTE_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.unit == "B")
OP_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.per_op)
DEFAULT_TOLERANCES: dict[str, float] = {m.name: m.tolerance for m in METRIC_TABLE}


def op_metrics(traffic: Mapping[str, int]) -> dict[str, int]:
    """Every per-op metric (`OP_METRICS` order) of one op's, or a sum of ops', traffic."""
    return {m.name: m.of(traffic) for m in METRIC_TABLE if m.of is not None}


def combine(metric: str, values: list[int] | tuple[int, ...]) -> int:
    """Stage figure from per-step figures: the maximum for high-water marks, the sum for everything else (a
    derived count such as the analytic model's ``causal_tensor_flops`` adds up too)."""
    return max(values, default=0) if metric in PEAK_METRICS else sum(values)
