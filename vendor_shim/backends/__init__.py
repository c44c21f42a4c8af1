"""Backend registry: names -> lazily imported factories (so importing the shim never imports transformers)."""

from __future__ import annotations

from typing import Any

from vendor_shim.errors import VendorInputError

BACKENDS = ("hf", "remote-code")
# The analytic implementation profile that mirrors each backend (VisionWorkload.impl).
IMPL_OF_BACKEND = {"hf": "hf", "remote-code": "official"}


def get_backend(name: str, *, vendor_dir: str | None = None, trust_remote_code: bool = False) -> Any:
    """A `VendorBackend` (in-process) or `OutOfProcessBackend` for ``name``.

    ``hf``: `vendor_shim.backends.hf.HfBackend()`.
    ``remote-code``: `vendor_shim.backends.remote_code.create_backend(vendor_dir=..., trust_remote_code=...)`.
    """
    if name == "hf":
        from vendor_shim.backends.hf import HfBackend

        return HfBackend()
    if name == "remote-code":
        try:
            from vendor_shim.backends import remote_code
        except ImportError as exc:  # pragma: no cover - depends on the remote-code helper's module
            raise VendorInputError(f"backend 'remote-code' is not available ({exc}): use --backend hf") from exc
        return remote_code.create_backend(vendor_dir=vendor_dir, trust_remote_code=trust_remote_code)
    raise VendorInputError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
