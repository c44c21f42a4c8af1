"""``--dtype auto``: the dtype a device runs fast, decided in one place for every CLI.

Counts never depend on dtype (tested), so the only question is speed: bfloat16 (the model's
published dtype) where the device has native bf16 arithmetic, float32 otherwise.  On a CPU
without AVX512_BF16/AMX a bf16 matmul runs ~100-250x slower than float32 (measured: 0.3 vs
80 GFLOP/s on an AVX2-only EPYC), and the meta device does no arithmetic at all, so it
resolves like the host CPU (vision-only and end-to-end runs on one machine then agree).

This module never imports torch (the analytic side must not): callers pass what they probed.
`vendor_shim.env.native_bf16` probes through torch; `cpuinfo_native_bf16` reads /proc/cpuinfo
for the torch-free `dsocr-analytic`.  Both honour ``ATEN_CPU_CAPABILITY`` and
``ONEDNN_MAX_CPU_ISA``, the variables that cap which kernels torch may use.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from core.workload import DTYPES

AUTO = "auto"
DTYPE_CHOICES = (AUTO, *DTYPES)
DEFAULT_DTYPE = AUTO
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
_CAPPED_ATEN = ("default", "avx2", "zvector", "vsx")  # ATEN_CPU_CAPABILITY values below AVX512
_CAPPED_ONEDNN = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni")


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a run uses and why (recorded in traces, reports and, through the workload, the cache key)."""

    requested: str
    dtype: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def choose_dtype(requested: str, *, device: str, native_bf16: bool, probe: str) -> DtypeChoice:
    """``requested`` wins unless it is ``auto``; then bfloat16 iff the arithmetic device runs it natively."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype {requested!r} unknown: use one of {', '.join(DTYPE_CHOICES)}")
    if requested != AUTO:
        return DtypeChoice(requested, requested, "asked for with --dtype")
    where = "meta (resolved like this host's CPU)" if device == "meta" else device
    if native_bf16:
        return DtypeChoice(AUTO, "bfloat16", f"{where} runs bfloat16 natively ({probe})")
    return DtypeChoice(AUTO, "float32", f"{where} has no native bfloat16 ({probe}): float32 is the fast dtype here")


def capped_by_environment() -> str | None:
    """The variable that forbids bf16 kernels on this host, if one is set (e.g. ATEN_CPU_CAPABILITY=avx2)."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _CAPPED_ATEN:
        return f"ATEN_CPU_CAPABILITY={aten}"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().lower()
    if onednn in _CAPPED_ONEDNN:
        return f"ONEDNN_MAX_CPU_ISA={onednn}"
    return None


def cpuinfo_native_bf16(path: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """(native bf16?, what was seen) from the CPU flags, without torch."""
    capped = capped_by_environment()
    if capped:
        return False, capped
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False, f"{path} unreadable"
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    return bool(found), "cpu flags: " + (", ".join(found) if found else "no avx512_bf16/amx_bf16")
