"""Output files: written atomically under unique temporary names, and their folders checked before any work.

A temporary is always a fresh name made by `tempfile` in the target's own folder (so the final rename
stays on one file system), opened exclusively: two writers to one target never share or remove each
other's temporary, and no existing file is ever taken for one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path | str, text: str, *, prefix: str | None = None, sync: bool = False) -> Path:
    """Write `text` to `path` via a unique temporary sibling renamed into place; readers see old or new, never
    a part.  `prefix` names the temporary (default: `.<name>.`); `sync` fsyncs it before the rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def unwritable_folder(folder: Path | str) -> str | None:
    """Why files could not be created in `folder` (made if missing), or None when they could; creates nothing.

    The nearest existing ancestor must be a folder this process can write into.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None
