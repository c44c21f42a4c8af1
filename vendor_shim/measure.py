"""`measure()`: the Python entry point (one workload in, one validated `Trace` out)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.workload import VisionWorkload
from vendor_shim.backends import REGISTRY, get_backend
from vendor_shim.backends.base import (
    LoadedModel,
    OutOfProcessBackend,
    VendorBackend,
    device_refusal,
    resolve_execution,
)
from vendor_shim.cache import ModelCache
from vendor_shim.errors import VendorInputError
from vendor_shim.trace import Trace

if TYPE_CHECKING:
    from vendor_shim.decode_steps import StepRecord, StepRun
    from vendor_shim.harness import BaseRuns


def check_device(device: str, vision_only: bool) -> None:
    """One-line `VendorInputError` for a device this request cannot use."""
    reason = device_refusal(device, vision_only)
    if reason:
        raise VendorInputError(reason)
    if device == "cuda":
        from vendor_shim.env import cuda_unavailable_reason

        reason = cuda_unavailable_reason(device)
        if reason:
            raise VendorInputError(reason)


def measure(
    workload: VisionWorkload,
    backend: str | Any = "hf",
    device: str = "cpu",
    vision_only: bool = False,
    vendor_dir: str | None = None,
    trust_remote_code: bool = False,
    decoder_layers: int | None = None,
    model_cache: ModelCache | None = None,
    fvcore: bool = True,
    vision_device: str | None = None,
    execution: str = "auto",
    dtype_reason: str | None = None,
    decode_steps: list[StepRecord] | StepRun | None = None,
    steps_out: list[StepRecord] | None = None,
    base_runs: BaseRuns | None = None,
) -> Trace:
    """Count what ``backend`` executes for ``workload``.  ``backend`` is a name or a backend object.

    ``vision_device="meta"`` counts the vision stack shapes-only on the meta device and runs only the
    decoder on ``device`` (counts are identical; CPU == meta is tested), which is much faster on a CPU.
    ``execution``: "shapes" runs the counted ops hollow (same ops and counts, no arithmetic: `vendor_shim.hollow`),
    "real" does the arithmetic (the reference), "auto" = shapes except on cuda.
    ``dtype_reason``: why ``workload.dtype`` was chosen (`vendor_shim.env.resolve_dtype`), kept in the trace.
    ``decode_steps`` / ``steps_out``: the workload's decode steps measured before, and where this run's own go
    (`vendor_shim.decode_steps`; in-process backends, shapes execution); ``base_runs``: vision and prefill kept by
    signature for the pages given their decode steps (`vendor_shim.harness.BaseRuns`).
    Raises `VendorInputError` (exit 2) for bad requests, `VendorRunError` (exit 3) when the run fails.
    """
    if isinstance(backend, str):
        execution = REGISTRY.spec(backend).execution(execution, device)
    execution = _checked_request(workload, device, vision_only, execution)
    be = (
        get_backend(
            backend,
            vendor_dir=vendor_dir,
            trust_remote_code=trust_remote_code,
            model=workload.model,
            decoder_layers=decoder_layers,
        )
        if isinstance(backend, str)
        else backend
    )
    if isinstance(be, OutOfProcessBackend):
        if decode_steps is not None or steps_out is not None or base_runs is not None:
            raise VendorInputError(f"backend {be.name!r} runs in a worker: its decode steps are not shared")
        return Trace.from_dict(
            be.measure_dict(
                workload, device=device, vision_only=vision_only, execution=execution, dtype_reason=dtype_reason
            )
        )
    return _measure_in_process(
        be,
        workload,
        device=device,
        vision_only=vision_only,
        cache=model_cache if model_cache is not None else ModelCache(),
        fvcore=fvcore,
        vision_device=vision_device,
        execution=execution,
        dtype_reason=dtype_reason,
        decode_steps=decode_steps,
        steps_out=steps_out,
        base_runs=base_runs,
    )


def _checked_request(workload: VisionWorkload, device: str, vision_only: bool, execution: str) -> str:
    """The resolved execution mode, after the request-wide checks (bad requests fail before any backend exists)."""
    try:
        execution = resolve_execution(execution, device)
    except ValueError as exc:
        raise VendorInputError(str(exc)) from None
    if not isinstance(workload, VisionWorkload):
        raise VendorInputError("workload must be an analytic.VisionWorkload: build it with VisionWorkload.from_page")
    check_device(device, vision_only)
    return execution


def _measure_in_process(
    be: VendorBackend,
    workload: VisionWorkload,
    *,
    device: str,
    vision_only: bool,
    cache: ModelCache,
    fvcore: bool,
    vision_device: str | None,
    execution: str,
    dtype_reason: str | None,
    decode_steps: list[StepRecord] | StepRun | None = None,
    steps_out: list[StepRecord] | None = None,
    base_runs: BaseRuns | None = None,
) -> Trace:
    """Build (or reuse) the model in this process and count the workload under the harness."""
    reason = be.supports_device(device, vision_only)
    if reason:
        raise VendorInputError(reason)
    from vendor_shim.harness import run_counted

    loaded, reused = cache.get_or_build(
        be,
        device=device,
        dtype=workload.dtype,
        attn_impl=workload.attn_impl,
        vision_only=vision_only,
        execution=execution,
    )
    vision_loaded = _vision_build(be, cache, workload, device, vision_device, vision_only)
    return run_counted(
        be,
        loaded,
        workload,
        vision_only=vision_only,
        fvcore=fvcore,
        model_reused=reused,
        vision_loaded=vision_loaded,
        execution=execution,
        dtype_reason=dtype_reason,
        decode_steps=decode_steps,
        steps_out=steps_out,
        base_runs=base_runs,
    )


def _vision_build(
    be: VendorBackend,
    cache: ModelCache,
    workload: VisionWorkload,
    device: str,
    vision_device: str | None,
    vision_only: bool,
) -> LoadedModel | None:
    """The separate meta build that counts the vision stack (``vision_device="meta"``), else None."""
    if vision_device in (None, device) or vision_only:
        return None
    if vision_device != "meta":
        raise VendorInputError(f"vision_device {vision_device!r} unsupported: use 'meta' or leave it unset")
    if not be.supports_preencoded_vision():
        raise VendorInputError(f"backend {be.name!r} cannot split vision onto meta: leave vision_device unset")
    vision_loaded, _ = cache.get_or_build(
        be, device="meta", dtype=workload.dtype, attn_impl=workload.attn_impl, vision_only=True
    )
    return vision_loaded
