"""Library releases an implementation profile mirrors: version-keyed profile variants and the supported range.

An implementation's code comes from a library (transformers for `hf` and, pinned, for `official`), and a new
release may change what that code executes (a cast that is gone, a weight kept in float32). Each profile has a
release table, `core/releases/<profile>.yaml`: the release its YAML mirrors (`base`), one entry per
behaviour change (`since`, the profile fields it sets, the code, the ops and the metrics it moves), and the
releases the embedded gate was verified with, for the profile's library and for torch. Resolving an installed
version applies every change up to it (the variant); a version outside the verified range still resolves (to the
nearest variant below it) and is named, never silently passed or failed.

Pure Python over version strings: no torch, no transformers (the caller reads the installed versions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RELEASE_DIR = Path(__file__).resolve().parent / "releases"
_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")
DRIFT_ADVICE = "failing stages may be library changes, not model errors: run scripts/drift.sh"


class ReleaseError(ValueError):
    """A release table is malformed or a version cannot be read; the message names the fix."""


def release_key(version: str) -> tuple[int, ...]:
    """'5.24.0' -> (5, 24, 0); local builds and pre-releases keep their numbers ('2.13.0+cu130' -> (2, 13, 0))."""
    m = _VERSION.match(str(version))
    if not m:
        raise ReleaseError(f"version {version!r} has no release number: expected digits like 5.24.0")
    return tuple(int(p) for p in m.group(1).split("."))


def minor(version: str) -> tuple[int, int]:
    """The minor release a version belongs to: the unit the supported range is kept in ('5.24.1' -> (5, 24))."""
    key = (*release_key(version), 0)
    return key[0], key[1]


def _minor_text(m: tuple[int, int]) -> str:
    return f"{m[0]}.{m[1]}"


@dataclass(frozen=True)
class ReleaseChange:
    """One behaviour change of the library's code, effective from `since` on."""

    since: str
    set: dict[str, Any]
    code: str
    ops: str
    effect: str

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "set": dict(self.set), "code": self.code, "ops": self.ops, "effect": self.effect}


@dataclass(frozen=True)
class LibraryCheck:
    """One library of a run against the releases the gate was verified with."""

    library: str
    version: str | None
    verified: tuple[str, ...]
    note: str | None  # None: inside the supported range

    @property
    def supported_range(self) -> str:
        minors = sorted({minor(v) for v in self.verified})
        if not minors:
            return "none"
        lo, hi = _minor_text(minors[0]), _minor_text(minors[-1])
        return lo if lo == hi else f"{lo}-{hi}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "library": self.library,
            "version": self.version,
            "verified": list(self.verified),
            "supported_range": self.supported_range,
            "in_range": self.note is None,
            "note": self.note,
        }


@dataclass(frozen=True)
class ReleaseTable:
    """The release table of one implementation profile (see the module docstring)."""

    profile: str
    library: str
    base: str
    verified: dict[str, tuple[str, ...]]
    changes: tuple[ReleaseChange, ...]

    def applied(self, version: str | None) -> tuple[ReleaseChange, ...]:
        """The changes in force at ``version`` (None: the newest verified release, what setup installs)."""
        at = release_key(version or self.newest)
        return tuple(c for c in self.changes if release_key(c.since) <= at)

    def variant(self, version: str | None) -> str:
        """'hf@5.24': the profile and the release whose behaviour it mirrors (the newest change applied)."""
        applied = self.applied(version)
        return f"{self.profile}@{_minor_text(minor(applied[-1].since if applied else self.base))}"

    def overrides(self, version: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for change in self.applied(version):
            out.update(change.set)
        return out

    @property
    def newest(self) -> str:
        return max(self.verified[self.library], key=release_key)

    def check(self, library: str, version: str | None) -> LibraryCheck:
        """``library`` at ``version`` against the verified releases (by minor release: 5.24.1 is in 5.23-5.25)."""
        verified = self.verified.get(library, ())
        check = LibraryCheck(library, version, verified, None)
        if version is None:
            return LibraryCheck(library, None, verified, f"{library} version unknown (not installed?)")
        if not verified:
            return LibraryCheck(library, version, verified, f"{library} {version}: no release verified yet")
        minors = sorted({minor(v) for v in verified})
        here = minor(version)
        if here in minors:
            return check
        where = "newer than" if here > minors[-1] else "older than" if here < minors[0] else "not a verified release of"
        return LibraryCheck(
            library, version, verified, f"{library} {version} is {where} the supported range {check.supported_range}"
        )

    def checks(self, versions: dict[str, str | None]) -> list[LibraryCheck]:
        """The profile's library and torch, each against its verified releases."""
        return [self.check(lib, versions.get(lib)) for lib in self.verified]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "library": self.library,
            "base": self.base,
            "verified": {k: list(v) for k, v in self.verified.items()},
            "changes": [c.to_dict() for c in self.changes],
        }


@cache
def release_table(profile: str) -> ReleaseTable:
    """The release table of ``profile`` (configs/releases/<profile>.yaml), checked once."""
    path = RELEASE_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ReleaseError(f"profile {profile!r} has no release table: add core/releases/{profile}.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ReleaseError(f"{path}: expected a mapping")
    try:
        library, base = str(raw["library"]), str(raw["base"])
        verified = {str(k): tuple(str(v) for v in vs) for k, vs in raw["verified"].items()}
        changes = tuple(
            ReleaseChange(str(c["since"]), dict(c["set"]), str(c["code"]), str(c["ops"]), str(c["effect"]))
            for c in raw.get("changes") or []
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReleaseError(f"{path}: {exc!r} missing or malformed: see the header of releases/hf.yaml") from exc
    if library not in verified:
        raise ReleaseError(f"{path}: verified must list the releases of {library}, the profile's library")
    for v in (base, *(c.since for c in changes), *(x for vs in verified.values() for x in vs)):
        release_key(v)
    if [release_key(c.since) for c in changes] != sorted(release_key(c.since) for c in changes):
        raise ReleaseError(f"{path}: list the changes oldest first")
    return ReleaseTable(profile, library, base, verified, changes)


def library_report(profile: str, versions: dict[str, str | None]) -> dict[str, Any]:
    """What a run's reports say about its libraries: the variant used and every library outside the range."""
    table = release_table(profile)
    checks = table.checks(versions)
    notes = [c.note for c in checks if c.note]
    return {
        "profile": profile,
        "variant": table.variant(versions.get(table.library)),
        "library": table.library,
        "library_version": versions.get(table.library),
        "checks": [c.to_dict() for c in checks],
        "verified": not notes,
        "notes": notes,
        "advice": DRIFT_ADVICE if notes else None,
    }
