"""One line naming the machine a benchmark figure was measured on (printed by every benchmark)."""

from __future__ import annotations

import os


def host_line(dtype_request: str = "auto", device: str = "cpu") -> str:
    """CPU model, torch's kernel capability, native bf16, cores/threads and what ``--dtype auto`` picks here."""
    from vendor_shim.env import cpu_info, resolve_dtype

    info = cpu_info()
    choice = resolve_dtype(dtype_request, device)
    extras = [n for n in ("avx512_bf16", "amx") if info[n]]
    capped = f", capped by {info['capped_by']}" if info["capped_by"] else ""
    return (
        f"host: {info['model']} | capability {info['capability']}"
        f"{' + ' + '/'.join(e.upper() for e in extras) if extras else ''}{capped} | native bf16 "
        f"{'yes' if info['native_bf16'] else 'no'} | {os.cpu_count()} cores, {info['torch_threads']} torch threads "
        f"| --dtype {dtype_request} -> {choice.dtype}"
    )
