"""Human-readable numbers for reports and the console (FLOPs, bytes, deltas)."""

from __future__ import annotations

import math

_FLOP_UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"))
_BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def metric_unit(metric: str, value: float) -> tuple[float, str]:
    """The unit a figure of `metric` as large as `value` is shown in: (1e12, 'TFLOP'), (2**30, 'GiB'), (1, 'B')."""
    units, base = (_FLOP_UNITS, "FLOP") if metric.endswith("flops") else (_BYTE_UNITS, "B")
    return _unit(value, units, base)


def axis_ticks(metric: str, low: float, high: float, most: int = 6) -> list[tuple[float, str]]:
    """Round ticks for an axis from `low` to `high`: (value, label) at multiples of 1, 2 or 5 x 10^k of the unit
    `format_metric` shows the larger end in, every label in that one unit ('0', '200 GiB', '400 GiB');
    at most `most` ticks."""
    scale, unit = metric_unit(metric, max(abs(low), abs(high)))
    lo, hi = low / scale, high / scale
    step = _round_step((hi - lo) / max(most - 1, 1)) if hi > lo else 1.0
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    values = [round(k * step, 12) for k in range(first, last + 1)]
    return [(v * scale, "0" if v == 0 else f"{v:g} {unit}") for v in values]


def _round_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is at least `raw` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def format_flops(value: float | None, digits: int = 3) -> str:
    """1.234e12 -> '1.234 TFLOP'; exact integers below 1000 stay exact ('512 FLOP')."""
    return _scaled(value, _FLOP_UNITS, "FLOP", digits)


def format_bytes(value: float | None, digits: int = 3) -> str:
    """Binary units: 3 * 2**20 -> '3.000 MiB'."""
    return _scaled(value, _BYTE_UNITS, "B", digits)


def format_metric(metric: str, value: float | None, digits: int = 3) -> str:
    """FLOP metrics in FLOP units, byte metrics in byte units."""
    return format_flops(value, digits) if metric.endswith("flops") else format_bytes(value, digits)


def format_rel(value: float | None, digits: int = 2) -> str:
    """A relative delta as a percentage; exactly 0 -> '0 (exact)' (not a rounded 0.00%), None -> '-', inf -> 'inf'."""
    if value is None or math.isnan(value):  # pandas writes a missing value as NaN
        return "-"
    if value == 0:
        return "0 (exact)"
    if math.isinf(value):
        return "inf"
    return f"{value * 100:.{digits}f}%"


def _scaled(value: float | None, units: tuple[tuple[float, str], ...], base: str, digits: int) -> str:
    if value is None or math.isnan(value):  # pandas writes a missing value as NaN
        return "-"
    if not math.isfinite(value):
        return f"{value} {base}"
    scale, unit = _unit(value, units, base)
    return f"{value:g} {base}" if scale == 1 else f"{value / scale:.{digits}f} {unit}"


def _unit(value: float, units: tuple[tuple[float, str], ...], base: str) -> tuple[float, str]:
    """The largest unit not above |value|; the bare base unit below the smallest (exact counts stay exact)."""
    return next(((scale, unit) for scale, unit in units if abs(value) >= scale), (1.0, base))
