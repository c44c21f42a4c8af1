"""What the official code needs from its process, applied inside the worker only.

Each patch is process-wide, which is why they live in the one-shot worker subprocess
(`vendor_shim.remote_code.worker`) and never in the caller's interpreter:

- ``torchvision``: our stub (`_stubs/torchvision`) goes first on ``sys.path``;
- ``.cuda()`` inside forward: `Tensor.cuda` / `Module.cuda` move to the requested device;
- construction without random init: `torch.nn.init` fills are no-ops while building, so a
  3B-parameter model costs an allocation; `fill_parameters` then writes cheap values.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STUBS_DIR = Path(__file__).resolve().parent / "_stubs"
_INIT_FNS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


def install_torchvision_stub() -> str:
    """Put the stub first on sys.path; returns what `torchvision` resolves to (for the trace)."""
    if str(STUBS_DIR) not in sys.path:
        sys.path.insert(0, str(STUBS_DIR))
    sys.modules.pop("torchvision", None)
    import torchvision

    return "stub" if getattr(torchvision, "DSOCR_STUB", False) else f"torchvision {torchvision.__version__}"


def redirect_cuda(device: str) -> None:
    """Make `.cuda()` (called inside the official forward) move to ``device`` instead."""
    import torch

    target = torch.device("cuda", 0) if device == "cuda" else torch.device(device)

    def tensor_cuda(self: torch.Tensor, device: Any = None, non_blocking: bool = False, **_: Any) -> torch.Tensor:
        return self.to(target, non_blocking=non_blocking)

    def module_cuda(self: torch.nn.Module, device: Any = None) -> torch.nn.Module:
        return self.to(target)

    torch.Tensor.cuda = tensor_cuda  # type: ignore[method-assign]
    torch.nn.Module.cuda = module_cuda  # type: ignore[method-assign]


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Skip every `torch.nn.init` fill and `reset_parameters` while the model is built."""
    import torch

    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FNS if hasattr(torch.nn.init, name)}

    def skip(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for name in saved:
            setattr(torch.nn.init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def fill_parameters(module: Any, seed: int = 0, scale: float = 0.02) -> int:
    """Give every parameter small deterministic values (FLOPs do not depend on them).

    One random block is generated once and tiled, which costs about a memory copy per
    parameter instead of a random draw per element.  Returns the number of values written.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    block = (torch.rand(1 << 20, generator=gen) * 2 - 1) * scale
    written = 0
    with torch.no_grad():
        for p in module.parameters():
            if p.device.type == "meta":
                continue
            flat = p.view(-1)
            n = flat.numel()
            src = block.to(device=p.device, dtype=p.dtype)
            for start in range(0, n, src.numel()):
                stop = min(n, start + src.numel())
                flat[start:stop].copy_(src[: stop - start])
            written += n
    return written
