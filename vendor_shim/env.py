"""Environment facts and peak-memory probes for the trace (no global state)."""

from __future__ import annotations

import platform
import resource
from typing import Any

import torch


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
    }
