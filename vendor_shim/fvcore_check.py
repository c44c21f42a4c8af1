"""Secondary counter: fvcore on the traceable parts, converted to 2 FLOPs per multiply-add.

Parts: each vision root call (sam/clip/projector x global/crops) re-run on a meta-device
build of the vision stack with the recorded input shapes (shapes only, so it costs
milliseconds), and one decoder forward of a single token (no cache) on the loaded model.
For each part the primary counter (FlopCounterMode with the shim's formulas) counts the
same call, so the two are compared like for like.  fvcore counts 1 per multiply-add and
has no handle for SDPA or grouped matmul: its ``unsupported`` list says what it skipped.

It never breaks a run: a missing fvcore, an exception, or an exhausted time budget turns
into ``status: skipped|failed`` with a reason, part by part.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vendor_shim.formulas import custom_mapping

TIME_BUDGET_S = 20.0
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _First(torch.nn.Module):
    """Wraps a root so tracing sees a plain tensor output (model outputs are dict-like)."""

    def __init__(self, mod: torch.nn.Module, kw: str | None = None) -> None:
        super().__init__()
        self.mod = mod
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mod(**{self.kw: x}) if self.kw else self.mod(x)
        if isinstance(out, torch.Tensor):
            return out
        return out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state


def _count_both(mod: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
        with counter:
            mod(x)
        fa = FlopCountAnalysis(mod, (x,))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        fv = int(fa.total())
    return {
        "fvcore_x2": 2 * fv,
        "flop_counter": int(counter.get_total_flops()),
        "unsupported": dict(sorted(fa.unsupported_ops().items())),
    }


def _vision_parts(vision_roots: dict[str, torch.nn.Module], records: list[Any], dtype: torch.dtype) -> list[tuple]:
    parts = []
    for rec in records:
        if rec.root in vision_roots and rec.input_shapes:
            shape = rec.input_shapes[0][1]
            parts.append((f"{rec.root}.{rec.part}", vision_roots[rec.root], shape, None, "meta"))
    return parts


def fvcore_secondary(
    loaded: Any,
    records: list[Any],
    vision_only: bool,
    meta_vision_roots: dict[str, torch.nn.Module] | None = None,
    budget_s: float = TIME_BUDGET_S,
) -> dict[str, Any]:
    """``{"status", "reason", "parts": {name: {fvcore_x2, flop_counter, unsupported} | {error}}}``."""
    with warnings.catch_warnings():  # fvcore's jit tracing is noisy; its findings land in the trace instead
        warnings.simplefilter("ignore")
        return _fvcore_secondary(loaded, records, vision_only, meta_vision_roots, budget_s)


def _fvcore_secondary(
    loaded: Any,
    records: list[Any],
    vision_only: bool,
    meta_vision_roots: dict[str, torch.nn.Module] | None,
    budget_s: float,
) -> dict[str, Any]:
    try:
        import fvcore.nn  # noqa: F401
    except ImportError as exc:
        return {"status": "skipped", "reason": f"fvcore not importable ({exc})", "parts": {}}
    dtype = TORCH_DTYPES.get(loaded.dtype, torch.float32)
    vision_roots = meta_vision_roots
    if vision_roots is None and loaded.device == "meta":
        vision_roots = dict(loaded.roots.vision)
    jobs: list[tuple[str, torch.nn.Module, list[int], str | None, str]] = []
    if vision_roots:
        jobs += _vision_parts(vision_roots, records, dtype)
    if not vision_only and loaded.roots.decoder is not None:
        hidden = _hidden_size(loaded.roots.decoder)
        if hidden:
            jobs.append(("decoder.single_token", loaded.roots.decoder, [1, 1, hidden], "inputs_embeds", loaded.device))
    parts: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, mod, shape, kw, device in jobs:
        if time.perf_counter() - t0 > budget_s:
            parts[name] = {"error": f"skipped: time budget {budget_s:.0f}s spent"}
            continue
        parts[name] = _safe(
            lambda mod=mod, shape=shape, kw=kw, device=device: _count_both(
                _First(mod, kw), torch.zeros(shape, dtype=dtype, device=device)
            )
        )
    if not vision_roots:
        parts["vision"] = {"error": "skipped: no meta-device vision stack available for a shapes-only re-run"}
    failed = [n for n, p in parts.items() if "error" in p]
    status = "ok" if not failed else ("failed" if len(failed) == len(parts) else "partial")
    return {
        "status": status,
        "reason": "" if not failed else f"{len(failed)} part(s) not counted: {', '.join(failed)}",
        "convention": "fvcore counts 1 per multiply-add; fvcore_x2 doubles it",
        "elapsed_s": time.perf_counter() - t0,
        "parts": parts,
    }


def _hidden_size(mod: torch.nn.Module) -> int | None:
    cfg = getattr(mod, "config", None)
    return getattr(cfg, "hidden_size", None)


def _safe(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # secondary counter: record, never raise
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
