"""On-disk cache of vendor traces, keyed by everything that can change a count.

A 1,000-page run costs one vendor run per distinct key.  The key covers the
backend, the sha256 of any code it executed, library versions, the workload's
signature (dims, crop grid, token counts, decode tokens, dtype, lm_head scope,
impl, attention impl), device, vision-only and the trace schema version.
Entries are written atomically (temporary file + os.replace); an entry that is
unreadable, not a regular file, or not a valid trace is a miss and is removed.
Faults of the cache folder itself (a file in its place, read-only, disk full) are the
caller's to report as a cache problem: `probe` names them up front, `put` raises OSError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vendor_shim.versions import library_versions

CACHE_FORMAT = 1  # bump when the entry layout or the key material changes meaning
MAX_ENTRY_BYTES = 1 << 28  # a full end-to-end trace is a few MB


def cache_base_dir() -> Path:
    """$DSOCR_CACHE_DIR, else ~/.cache/dsocr-flopcheck (traces and rendered pages live below it)."""
    base = os.environ.get("DSOCR_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "dsocr-flopcheck"


def keep_matplotlib_in_cache() -> None:
    """matplotlib's config and font cache under <cache base>/matplotlib, not $HOME (unless MPLCONFIGDIR is set):
    call before matplotlib is first imported (it reads the variable once)."""
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(cache_base_dir() / "matplotlib")


def default_cache_root() -> Path:
    """Where traces go by default: <cache base>/traces."""
    return cache_base_dir() / "traces"


def key_material(
    *,
    backend: str,
    workload_signature: Mapping[str, Any],
    device: str,
    vision_only: bool,
    schema_version: str | int,
    code_hashes: Mapping[str, str] | None = None,
    versions: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The JSON-able document whose canonical hash is the key (stored beside the trace for auditing)."""
    return {
        "cache_format": CACHE_FORMAT,
        "backend": backend,
        "code_hashes": dict(sorted((code_hashes or {}).items())),
        "versions": dict(versions) if versions is not None else library_versions(),
        "workload": dict(workload_signature),
        "device": device,
        "vision_only": bool(vision_only),
        "schema_version": schema_version,
    }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def hash_material(material: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(material).encode("ascii")).hexdigest()


class TraceCache:
    """Vendor traces under `root/<key[:2]>/<key>.json`.

    `validate(trace)` raises for a trace that must not be served (the vendor's own schema
    check); such an entry is a miss, removed, and replaced by the next `put`.
    """

    def __init__(
        self, root: Path | str | None = None, validate: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.validate = validate

    def probe(self) -> str | None:
        """Why the folder cannot take entries (a file in its way, read-only, ...), or None when it can.

        Creates the folder when missing; the probe file is removed at once.
        """
        try:
            if self.root.exists() and not self.root.is_dir():
                return "is a file, not a folder"
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".probe-", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            return f"not writable ({exc.strerror or exc})"
        return None

    @staticmethod
    def key_for(
        *,
        backend: str,
        workload: Any,
        device: str,
        vision_only: bool,
        schema_version: str | int,
        code_hashes: Mapping[str, str] | None = None,
        versions: Mapping[str, str | None] | None = None,
    ) -> str:
        """sha256 of the canonical key material; `workload` is a VisionWorkload or its signature() dict."""
        signature = workload.signature() if hasattr(workload, "signature") else workload
        return hash_material(
            key_material(
                backend=backend,
                workload_signature=signature,
                device=device,
                vision_only=vision_only,
                schema_version=schema_version,
                code_hashes=code_hashes,
                versions=versions,
            )
        )

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key {key!r} is not a sha256 hex digest: build it with TraceCache.key_for")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached trace, or None on a miss; a corrupt or invalid entry counts as a miss and is removed."""
        path = self.path_for(key)
        try:
            entry = json.loads(_read_entry(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8, not a regular file
            _remove(path)
            return None
        if not self._valid(entry, key):
            _remove(path)
            return None
        return entry["trace"]

    def _valid(self, entry: Any, key: str) -> bool:
        if (
            not isinstance(entry, dict)
            or entry.get("cache_format") != CACHE_FORMAT
            or entry.get("key") != key
            or not isinstance(entry.get("trace"), dict)
        ):
            return False
        if self.validate is None:
            return True
        try:
            self.validate(entry["trace"])
        except Exception:  # any way a trace can be wrong is a miss, never a crash
            return False
        return True

    def put(self, key: str, trace: Mapping[str, Any], material: Mapping[str, Any] | None = None) -> Path:
        """Store a trace atomically; readers see the old entry or the whole new one, never a part."""
        path = self.path_for(key)
        entry = {"cache_format": CACHE_FORMAT, "key": key, "material": material, "trace": trace}
        text = json.dumps(entry, allow_nan=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:12]}-", suffix=".tmp")
        try:
            _write_fd(fd, text)
            os.replace(tmp, path)
        except BaseException:
            _remove(Path(tmp))
            raise
        return path


def _write_fd(fd: int, text: str) -> None:
    """Write and sync; a full disk raises here (OSError ENOSPC) and the caller removes the temporary."""
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _read_entry(path: Path) -> str:
    """An entry's text; never follows a link out of the cache, never blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = fh.read(MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"{path} is larger than {MAX_ENTRY_BYTES} bytes")
    return data.decode("utf-8")


def _remove(path: Path) -> None:
    """Remove a bad entry, whatever it is (a file, a link, a folder someone left there)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
