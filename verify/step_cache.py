"""Decode steps measured once per signature and key count, shared by every page of a run and across runs.

A step's work depends on the model, backend, implementation, dtype, routing rule and the keys it attends over,
never on the page (`vendor_shim.decode_steps`).  Entries live in memory for the run and, when a folder is given,
under ``<cache>/decode-steps/<sig[:2]>/<sig>/<first>-<last>.json``: one file for each run that measured steps, with
the key material beside them.  Written as the trace cache writes (temporary file, fsync, os.replace), so a reader
sees a whole file or none; a file that is unreadable, malformed, or whose steps are not the key counts its name
says is a miss and is removed.  A temporary left by a killed writer never matches the name pattern.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vendor_shim.decode_steps import STEP_FORMAT, StepLedger, StepRecord, StepRun
from verify.cache import _read_entry, _remove, _write_fd

_ENTRY = re.compile(r"(\d+)-(\d+)\.json")


LEDGER_FACTOR = 8  # a ledger is rebuilt for a page needing at least 1/8 of the signature's stored steps


class StepCache:
    """Steps by (signature key, key count).  ``root`` None: this run's memory only."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._ledgers: dict[str, StepLedger] = {}  # built on demand, dropped when a signature gains steps

    def folder(self, sig: str) -> Path | None:
        if len(sig) != 64 or any(c not in "0123456789abcdef" for c in sig):
            raise ValueError(f"step signature {sig!r} is not a sha256 hex digest")
        return None if self.root is None else self.root / sig[:2] / sig

    def get(self, sig: str, keys: Iterable[int]) -> dict[int, StepRecord]:
        """The stored steps among ``keys`` (missing ones are absent)."""
        known = self._load(sig)
        return {k: known[k] for k in keys if k in known}

    def run(self, sig: str, need: range) -> StepRun | None:
        """The stored steps of ``need`` (consecutive key counts) with their sums, or None when one is missing, or
        when the signature's ledger is out of date and rebuilding it over every stored step would cost more than
        LEDGER_FACTOR times adding this page's steps one by one (pages with short ranges, each storing new steps:
        the caller then gives the records alone)."""
        known = self._load(sig)
        if any(k not in known for k in need):
            return None
        ledger = self._ledgers.get(sig)
        if ledger is None:
            if len(need) * LEDGER_FACTOR < len(known):
                return None
            ledger = self._ledgers[sig] = StepLedger(known)
        sums = ledger.sums(need.start, need.stop - 1)
        return None if sums is None else StepRun([known[k] for k in need], sums)

    def put(self, sig: str, steps: list[StepRecord], material: Mapping[str, Any] | None = None) -> None:
        """Keep ``steps`` (consecutive key counts) for the run, then on disk; OSError (disk full, read-only) is the
        caller's to report as a cache problem: the run keeps them in memory either way."""
        if not steps:
            return
        keys = [s.keys for s in steps]
        if keys != list(range(keys[0], keys[0] + len(keys))):
            raise ValueError(f"steps to store are not consecutive key counts: {keys[:3]}...")
        self._load(sig).update({s.keys: s for s in steps})
        self._ledgers.pop(sig, None)
        folder = self.folder(sig)
        if folder is None:
            return
        entry = {"step_format": STEP_FORMAT, "key": sig, "material": material, "steps": [s.to_dict() for s in steps]}
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".steps-", suffix=".tmp")
        try:
            _write_fd(fd, json.dumps(entry, allow_nan=False))
            os.replace(tmp, folder / f"{keys[0]}-{keys[-1]}.json")
        except BaseException:
            _remove(Path(tmp))
            raise

    def _load(self, sig: str) -> dict[int, StepRecord]:
        known = self._steps.get(sig)
        if known is not None:
            return known
        known = self._steps[sig] = {}
        folder = self.folder(sig)
        if folder is None or not folder.is_dir():
            return known
        for path in sorted(folder.iterdir()):
            m = _ENTRY.fullmatch(path.name)
            if m is None:
                continue
            steps = _read_steps(path, sig, int(m.group(1)), int(m.group(2)))
            if steps is None:
                _remove(path)
                continue
            known.update({s.keys: s for s in steps})
        return known


def _read_steps(path: Path, sig: str, first: int, last: int) -> list[StepRecord] | None:
    """The file's steps, or None when it is not a whole, valid entry for exactly first..last."""
    try:
        entry = json.loads(_read_entry(path))
        if not isinstance(entry, dict) or entry.get("step_format") != STEP_FORMAT or entry.get("key") != sig:
            return None
        steps = [StepRecord.from_dict(d) for d in entry["steps"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if [s.keys for s in steps] != list(range(first, last + 1)):
        return None
    return steps
