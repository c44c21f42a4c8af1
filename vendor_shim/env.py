"""Environment facts and peak-memory probes for the trace (no global state)."""

from __future__ import annotations

import os
import platform
import resource
from typing import Any

import torch

from core.dtype_policy import DtypeChoice, capped_by_environment, choose_dtype

LOW_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "VSX")  # torch CPU capabilities below AVX512


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo 'model name'), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """What decides CPU speed: model, torch's kernel capability, native bf16/AMX, cores and threads."""
    cpu = getattr(torch, "cpu", None)

    def has(name: str) -> bool:
        fn = getattr(cpu, name, None)
        return bool(fn()) if callable(fn) else False

    onednn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    capability = torch.backends.cpu.get_cpu_capability()
    avx512_bf16, amx = has("_is_avx512_bf16_supported"), has("_is_amx_tile_supported")
    capped = capped_by_environment()
    return {
        "model": cpu_model(),
        "capability": capability,
        "avx512_bf16": avx512_bf16,
        "amx": amx,
        "onednn_bf16": onednn_bf16,
        "native_bf16": (avx512_bf16 or amx) and onednn_bf16 and capability not in LOW_CAPABILITIES and not capped,
        "capped_by": capped,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def native_bf16(device: str) -> tuple[bool, str]:
    """(native bf16 arithmetic on ``device``?, the evidence).  meta resolves like the host CPU."""
    if device == "cuda" and torch.cuda.is_available():
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"{torch.cuda.get_device_name(0)}: torch.cuda.is_bf16_supported() is {ok}"
    info = cpu_info()
    flags = [n for n in ("avx512_bf16", "amx") if info[n]]
    evidence = f"torch CPU capability {info['capability']}, " + (", ".join(flags) or "no avx512_bf16/amx")
    evidence += f", oneDNN bf16 {'yes' if info['onednn_bf16'] else 'no'}"
    if info["capped_by"]:
        evidence += f", capped by {info['capped_by']}"
    return bool(info["native_bf16"]), evidence


def dtype_evidence(dtype: str, device: str) -> str:
    """For a trace whose caller gave no reason: the dtype next to what the device can run natively."""
    ok, evidence = native_bf16(device)
    return f"{dtype} given by the caller; {device} native bf16: {'yes' if ok else 'no'} ({evidence})"


def resolve_dtype(requested: str, device: str) -> DtypeChoice:
    """``--dtype`` as given, or for ``auto`` the dtype ``device`` runs fast (`core.dtype_policy`)."""
    if requested != "auto":
        return choose_dtype(requested, device=device, native_bf16=False, probe="")
    ok, evidence = native_bf16(device)
    return choose_dtype(requested, device=device, native_bf16=ok, probe=evidence)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux clear_refs '5'); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of this process (since the last reset), falling back to ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if device == "meta":
        return "meta (shapes only)"
    return platform.processor() or platform.machine()


def cuda_unavailable_reason(device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "device 'cuda' requested but torch sees no GPU (torch.cuda.is_available() is False): use --device cpu"
    return None


def base_environment(device: str, dtype: str, backend: str) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "dtype": dtype,
        "backend": backend,
        "platform": platform.platform(),
        "cpu": cpu_info(),
    }
