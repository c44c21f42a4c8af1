"""A local DeepSeek-OCR or DeepSeek-OCR 2 snapshot: which family it is (config.json's
``architectures``), which files that family must have, what they hash to, and a check of its
config.json that fails with one line naming the file (exit 2).

Pure Python (no torch): the parent process validates before it spends a subprocess.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.families import FAMILY_TABLE
from vendor_shim.errors import VendorInputError

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Family:
    """What one model family's official snapshot looks like."""

    name: str  # the --model family (core.families)
    title: str  # for messages
    architecture: str  # config.json architectures[...] entry
    model_module: str  # the module auto_map points into
    code_files: tuple[str, ...]  # the files the official remote code consists of


# one per family, from the family registry (core.families: each family's snapshot layout is stated there)
FAMILIES: dict[str, Family] = {
    f.name: Family(f.name, f.title, f.snapshot.architecture, f.snapshot.model_module, f.snapshot.code_files)
    for f in FAMILY_TABLE
    if f.snapshot
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class SnapshotError(VendorInputError):
    """The snapshot directory is unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class Snapshot:
    """A validated snapshot directory."""

    root: Path
    config: dict[str, Any]
    code_hashes: dict[str, str]  # relative path -> sha256 of every code file run (+ config.json)
    has_tokenizer: bool
    weight_files: tuple[str, ...]
    family: str = "deepseek-ocr"  # detected from config.json's architectures

    @property
    def model_module(self) -> str:
        """The module name auto_map points into (``modeling_deepseekocr`` / ``modeling_deepseekocr2``)."""
        return FAMILIES[self.family].model_module

    @property
    def model_class(self) -> str:
        """'module.Class' of the model entry point (from config.json auto_map)."""
        return self.config["auto_map"]["AutoModel"]

    @property
    def config_class(self) -> str:
        return self.config["auto_map"]["AutoConfig"]

    def signature(self) -> dict[str, Any]:
        """What identifies this snapshot in a cache key and in reports."""
        return {
            "vendor_dir": str(self.root),
            "family": self.family,
            "code_hashes": dict(self.code_hashes),
            "weights": list(self.weight_files),
        }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_vendor_dir(root: Path) -> None:
    """The one check that --vendor-dir names a folder (the CLI asks it up front, `load_snapshot` again)."""
    if root.is_file():
        raise SnapshotError(f"{root}: vendor dir is a file, not a folder: pass a local DeepSeek-OCR snapshot directory")
    if not root.is_dir():
        raise SnapshotError(f"{root}: vendor dir does not exist: pass a local DeepSeek-OCR snapshot directory")


def load_snapshot(vendor_dir: str | Path | None, family: str | None = None) -> Snapshot:
    """Validate ``vendor_dir`` and hash its code; raises `SnapshotError` (exit 2) otherwise.

    The family comes from config.json's ``architectures``; when ``family`` (the run's --model) is given and
    differs, the snapshot is refused with one line naming config.json and the fix.
    """
    if vendor_dir is None or str(vendor_dir) == "":
        raise SnapshotError("backend remote-code needs --vendor-dir PATH: a local DeepSeek-OCR snapshot directory")
    root = Path(vendor_dir).expanduser().resolve()
    check_vendor_dir(root)
    if not (root / CONFIG_FILE).is_file():
        raise SnapshotError(
            f"{root / CONFIG_FILE}: missing from the snapshot: copy the official DeepSeek-OCR files into the vendor dir"
        )
    config, fam = _read_config(root / CONFIG_FILE)
    if family is not None and family != fam.name:
        raise SnapshotError(
            f"{root / CONFIG_FILE}: the snapshot is {fam.title} (architectures names {fam.architecture}) but the run "
            f"asks for --model {family}: pass --model {fam.name} or point --vendor-dir at a {family} snapshot"
        )
    missing = [name for name in fam.code_files if not (root / name).is_file()]
    if missing:
        raise SnapshotError(
            f"{root / missing[0]}: missing from the snapshot ({', '.join(missing)} absent): "
            f"copy the official {fam.title} files into the vendor dir"
        )
    # Every .py in the snapshot may be imported by the others: hash them all.
    code = sorted({*fam.code_files, *(p.name for p in root.glob("*.py"))})
    hashes = {name: sha256_file(root / name) for name in code}
    hashes[CONFIG_FILE] = sha256_file(root / CONFIG_FILE)
    weights = tuple(sorted(p.name for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()))
    has_tok = any((root / name).is_file() for name in TOKENIZER_FILES)
    return Snapshot(
        root=root, config=config, code_hashes=hashes, has_tokenizer=has_tok, weight_files=weights, family=fam.name
    )


def _read_config(path: Path) -> tuple[dict[str, Any], Family]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: not readable JSON ({exc}): restore the snapshot's config.json") from exc
    if not isinstance(config, dict):
        raise SnapshotError(f"{path}: expected a JSON object: restore the snapshot's config.json")
    archs = config.get("architectures") or []
    found = [f for f in FAMILIES.values() if isinstance(archs, list) and f.architecture in archs]
    if len(found) != 1:
        names = " or ".join(f.architecture for f in FAMILIES.values())
        raise SnapshotError(
            f"{path}: architectures={archs!r} does not name {names}: "
            "this is not a DeepSeek-OCR snapshot (point --vendor-dir at one)"
        )
    fam = found[0]
    auto_map = config.get("auto_map") or {}
    for key in ("AutoConfig", "AutoModel"):
        ref = auto_map.get(key, "")
        if not isinstance(ref, str) or ref.count(".") != 1 or not ref.startswith(fam.model_module + "."):
            raise SnapshotError(
                f"{path}: auto_map.{key}={ref!r} must be '{fam.model_module}.<Class>': restore the official config.json"
            )
    lang = config.get("language_config")
    for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
        if not isinstance(config.get(key), int) and not (isinstance(lang, dict) and isinstance(lang.get(key), int)):
            raise SnapshotError(f"{path}: field {key!r} missing or not an integer: restore the snapshot's config.json")
    return config, fam
