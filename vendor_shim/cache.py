"""`ModelCache`: a caller-held store of built models, reused across workloads (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vendor_shim.backends.base import LoadedModel, VendorBackend


@dataclass
class ModelCache:
    """Built models keyed by `VendorBackend.model_key`; holds at most ``max_models`` (oldest evicted)."""

    max_models: int = 2  # a full model plus a meta vision stack (vision_device="meta")
    _models: dict[tuple[Any, ...], LoadedModel] = field(default_factory=dict)

    def get_or_build(
        self,
        backend: VendorBackend,
        *,
        device: str,
        dtype: str,
        attn_impl: str,
        vision_only: bool,
        execution: str = "real",
    ) -> tuple[LoadedModel, bool]:
        """(model, reused).  A full model also serves vision-only requests on the same device/dtype/attn/execution."""
        kw = {"device": device, "dtype": dtype, "attn_impl": attn_impl, "execution": execution}
        key = backend.model_key(vision_only=vision_only, **kw)
        if key in self._models:
            return self._models[key], True
        if vision_only:
            full = backend.model_key(vision_only=False, **kw)
            if full in self._models:
                return self._models[full], True
        while self._models and len(self._models) >= self.max_models:
            self._models.pop(next(iter(self._models)))
        loaded = backend.build(vision_only=vision_only, **kw)
        self._models[key] = loaded
        return loaded, False

    def clear(self) -> None:
        self._models.clear()

    def __len__(self) -> int:
        return len(self._models)
