"""Backend `remote-code`: count a local DeepSeek-OCR or DeepSeek-OCR 2 snapshot (the official remote code).

The snapshot's code needs transformers 4.46.x, torchvision and CUDA-only calls, none of
which may touch the caller's interpreter.  So this backend is an `OutOfProcessBackend`:
it validates the snapshot here (its family from config.json, which must be the run's --model;
files, sha256 of every code file), makes
sure the pinned environment exists (`vendor_shim.remote_code.env`), and runs the very
same counting harness in a worker subprocess (`vendor_shim.remote_code.worker`) that
sees transformers 4.46.3 first on its path.  The worker returns a trace document.

Executing foreign code is refused unless the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vendor_shim.backends import REGISTRY
from vendor_shim.backends.base import OutOfProcessBackend, device_refusal
from vendor_shim.backends.worker_process import reply_slots, run_worker
from vendor_shim.errors import VendorInputError, VendorRunError, VendorShimError
from vendor_shim.remote_code.env import PINS, ensure_env
from vendor_shim.remote_code.snapshot import Snapshot, load_snapshot

if TYPE_CHECKING:
    from core.workload import VisionWorkload

TRUST_MESSAGE = (
    "backend remote-code imports and runs the snapshot's Python files: add --trust-remote-code "
    "(trust_remote_code=True) to allow it"
)
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def create_backend(
    *, vendor_dir: str | os.PathLike[str] | None, trust_remote_code: bool, model: str = "deepseek-ocr"
) -> RemoteCodeBackend:
    """The backend for ``vendor_dir`` running family ``model``; `VendorInputError` (exit 2) without trust, with a
    bad snapshot, or with a snapshot of another family than ``model``."""
    if not trust_remote_code:
        raise VendorInputError(TRUST_MESSAGE)
    return RemoteCodeBackend(load_snapshot(vendor_dir, family=model))


class RemoteCodeBackend(OutOfProcessBackend):
    """Runs the harness on a snapshot in a pinned-environment subprocess."""

    name: ClassVar[str] = "remote-code"

    def __init__(self, snapshot: Snapshot, *, fvcore: bool = False, pins: tuple[str, ...] = PINS):
        self.snapshot = snapshot
        self.fvcore = fvcore
        self.pins = pins

    def signature(self) -> dict[str, Any]:
        """Everything of this backend that changes a count: code hashes and pinned versions."""
        return {"backend": self.name, **self.snapshot.signature(), "pins": list(self.pins)}

    def cache_versions(self) -> dict[str, str | None]:
        """Library versions the worker runs with (for `verify.cache.key_material(versions=...)`):
        the main env's torch, the pinned transformers, not the caller's transformers."""
        from importlib import metadata

        try:
            torch_version: str | None = metadata.version("torch")
        except metadata.PackageNotFoundError:
            torch_version = None
        pinned = {p.split("==")[0]: p.split("==")[1] for p in self.pins if "==" in p}
        return {"torch": torch_version, "transformers": pinned.get("transformers"), "pins": ",".join(self.pins)}

    def environment(self) -> dict[str, Any]:
        return {"backend": self.name, **self.signature()}

    def prepare_environment(self) -> None:
        """Build (or find) the pinned environment now, before any page: its faults are `InfrastructureError`s."""
        ensure_env(self.pins)

    def supports_device(self, device: str, vision_only: bool) -> str | None:
        reason = device_refusal(device, vision_only)
        if reason:
            return reason
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "device 'cuda' requested but torch sees no GPU: use --device cpu"
        return None

    def measure_dicts(
        self,
        workloads: Sequence[VisionWorkload],
        *,
        device: str,
        vision_only: bool,
        timeout_s: float | None = None,
        execution: str = "real",
        dtype_reason: str | None = None,
    ) -> list[dict[str, Any] | VendorShimError]:
        """Trace documents for many workloads from ONE worker (one model build per dtype).

        Request-wide problems raise; a failure of one workload comes back in its slot as a
        `VendorInputError` / `VendorRunError` so the caller can report it and go on.
        """
        reason = self.supports_device(device, vision_only)
        if reason:
            raise VendorInputError(reason)
        for workload in workloads:
            _check_workload(workload, vision_only)
        # re-hash: the files may have changed since creation; every workload must be of the snapshot's family
        for workload in workloads:
            load_snapshot(self.snapshot.root, family=workload.model)
        snapshot = load_snapshot(self.snapshot.root, family=self.snapshot.family)
        env = ensure_env(self.pins)
        request = {
            "vendor_dir": str(snapshot.root),
            "family": snapshot.family,
            "workloads": [w.to_dict() for w in workloads],
            "device": device,
            "vision_only": vision_only,
            "execution": execution,
            "dtype_reason": dtype_reason,
            "fvcore": self.fvcore,
            "env_info": {"pinned_env": str(env.path), "pinned_env_key": env.key, "pins": list(env.pins)},
        }
        t0 = time.perf_counter()
        reply = run_worker(
            request,
            python=sys.executable,
            module="vendor_shim.remote_code.worker",
            pythonpath=env.pythonpath([str(_PROJECT_ROOT)]),
            timeout_s=timeout_s,
            label="remote-code",
        )
        out: list[dict[str, Any] | VendorShimError] = []
        for doc in reply_slots(reply, len(workloads), "remote-code"):
            if isinstance(doc, VendorShimError):
                out.append(doc)
                continue
            if doc.get("environment", {}).get("code_hashes") != snapshot.code_hashes:
                out.append(VendorRunError(f"{snapshot.root}: snapshot files changed during the run: run again"))
                continue
            doc["environment"]["worker_wall_s"] = round(time.perf_counter() - t0, 3)
            out.append(doc)
        return out


def _check_workload(workload: VisionWorkload, vision_only: bool) -> None:
    """What the official code cannot do (its registry entry says), refused before any subprocess starts (exit 2)."""
    scope = None if vision_only else workload.lm_head_scope
    refusal = REGISTRY.spec(RemoteCodeBackend.name).refusal(attn_impl=workload.attn_impl, lm_head_scope=scope)
    if refusal:
        raise VendorInputError(refusal)
