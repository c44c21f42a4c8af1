"""Library versions that change what a backend executes (cache keys, traces), read without importing them."""

from __future__ import annotations

from importlib import metadata

VERSIONED_LIBRARIES = ("torch", "transformers")


def library_versions(names: tuple[str, ...] = VERSIONED_LIBRARIES) -> dict[str, str | None]:
    """Installed versions, read from package metadata (no import of torch)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
