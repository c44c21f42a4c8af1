"""Human-readable numbers for reports and the console (FLOPs, bytes, deltas)."""

from __future__ import annotations

import math

_FLOP_UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"))
_BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


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
    for scale, unit in units:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f} {unit}"
    return f"{value:g} {base}"
