"""Backend `vllm`: count vLLM's own DeepSeek-OCR / DeepSeek-OCR 2 (the serving engine users deploy).

vLLM pins its own torch and transformers, so it runs in a project-managed virtual environment
(`vendor_shim.vllm_engine.env`, built on first use or by ``scripts/setup.sh --with-vllm``) and this backend is an
`OutOfProcessBackend`: the very same counting harness runs in a worker with that environment's interpreter
(`vendor_shim.vllm_engine.worker`), on vLLM's engine with dummy weights, eager, in-process
(`vendor_shim.vllm_engine.engine`); vLLM's own kernels are charged by `vendor_shim.vllm_engine.ops`.

``decoder_layers`` builds a shallower decoder (the published depth when None): a full-depth engine holds ~10 GiB of
dummy weights in bfloat16, twice that in float32.  The analytic side is told the same depth (``decoder.num_layers``),
so per-layer figures are compared exactly; the vision stack always runs at full size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vendor_shim.backends.base import OutOfProcessBackend
from vendor_shim.backends.worker_process import reply_slots, run_worker
from vendor_shim.errors import VendorInputError, VendorShimError
from vendor_shim.remote_code.env import cache_root
from vendor_shim.vllm_engine.env import PINS, VLLM_TORCH, ensure_env, env_key

if TYPE_CHECKING:
    from core.workload import VisionWorkload

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def create_backend(
    *, vendor_dir: str | None, trust_remote_code: bool, model: str = "deepseek-ocr", decoder_layers: int | None = None
) -> VllmBackend:
    """The backend for family ``model``; vLLM's code comes from its package, so no snapshot options apply."""
    if decoder_layers is not None and decoder_layers < 1:
        raise VendorInputError(f"--decoder-layers {decoder_layers}: build at least one decoder layer")
    return VllmBackend(model, decoder_layers=decoder_layers)


class VllmBackend(OutOfProcessBackend):
    """Runs the harness on vLLM's engine in a worker of the vLLM environment."""

    name: ClassVar[str] = "vllm"

    def __init__(self, family: str, *, decoder_layers: int | None = None, pins: tuple[str, ...] = PINS) -> None:
        self.family = family
        self.decoder_layers = decoder_layers
        self.pins = pins

    def signature(self) -> dict[str, Any]:
        return {"backend": self.name, "code_hashes": {}, "pins": list(self.pins), "decoder_layers": self.decoder_layers}

    def cache_versions(self) -> dict[str, str | None]:
        """What the worker runs with: the pinned vLLM (its own torch and transformers) and the decoder depth."""
        return {
            "vllm": self.pins[0].split("==")[1],
            "torch": VLLM_TORCH,
            "vllm_env": env_key(self.pins),
            "decoder_layers": None if self.decoder_layers is None else str(self.decoder_layers),
        }

    def environment(self) -> dict[str, Any]:
        return {"backend": self.name, **self.signature()}

    def prepare_environment(self) -> None:
        """Build (or find) the vLLM environment now, before any page: its faults are `InfrastructureError`s."""
        ensure_env(self.pins)

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
        """Trace documents for many workloads from one worker (one engine per dtype); a failed workload comes back
        in its slot."""
        if vision_only:
            raise VendorInputError(
                "the vllm backend counts whole pages (vision runs inside vLLM's first engine step): drop --vision-only"
            )
        if device != "cpu":
            raise VendorInputError(f"device {device!r}: the vllm backend runs vLLM's CPU build here; use --device cpu")
        for workload in workloads:  # refused before the environment or an engine is built
            if workload.mode != "gundam" or workload.base_size != 1024 or not workload.crop_mode:
                raise VendorInputError(
                    f"--mode {workload.mode}: vLLM's DeepSeek-OCR processor fixes gundam's views (1024 global with "
                    "crops); use --mode gundam without size overrides"
                )
        env = ensure_env(self.pins)
        work_dir = cache_root() / "vllm-models"
        request = {
            "family": self.family,
            "workloads": [w.to_dict() for w in workloads],
            "device": device,
            "vision_only": False,
            "execution": "real",
            "dtype_reason": dtype_reason,
            "decoder_layers": self.decoder_layers,
            "work_dir": str(work_dir),
        }
        t0 = time.perf_counter()
        reply = run_worker(
            request,
            python=str(env.python),
            module="vendor_shim.vllm_engine.worker",
            pythonpath=os.pathsep.join([str(_PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            timeout_s=timeout_s,
            label="vllm",
            extra_env={
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                # vLLM's own caches and config under the project's cache, never the user's home
                "VLLM_CACHE_ROOT": str(cache_root() / "vllm-cache"),
                "VLLM_CONFIG_ROOT": str(cache_root() / "vllm-config"),
            },
        )
        out = reply_slots(reply, len(workloads), "vllm")
        for doc in out:
            if isinstance(doc, dict):
                doc["environment"]["worker_wall_s"] = round(time.perf_counter() - t0, 3)
                doc["environment"]["vllm_env"] = str(env.path)
        return out
