"""A local DeepSeek-OCR snapshot: which files it must have, what they hash to, and a
check of its config.json that fails with one line naming the file (exit 2).

Pure Python (no torch): the parent process validates before it spends a subprocess.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vendor_shim.errors import VendorInputError

CODE_FILES = (
    "modeling_deepseekocr.py",
    "deepencoder.py",
    "modeling_deepseekv2.py",
    "configuration_deepseek_v2.py",
    "conversation.py",
)
CONFIG_FILE = "config.json"
ARCHITECTURE = "DeepseekOCRForCausalLM"
MODEL_MODULE = "modeling_deepseekocr"
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

    @property
    def model_class(self) -> str:
        """'module.Class' of the model entry point (from config.json auto_map)."""
        return self.config["auto_map"]["AutoModel"]

    @property
    def config_class(self) -> str:
        return self.config["auto_map"]["AutoConfig"]

    def signature(self) -> dict[str, Any]:
        """What identifies this snapshot in a cache key and in reports."""
        return {"vendor_dir": str(self.root), "code_hashes": dict(self.code_hashes), "weights": list(self.weight_files)}


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


def load_snapshot(vendor_dir: str | Path | None) -> Snapshot:
    """Validate ``vendor_dir`` and hash its code; raises `SnapshotError` (exit 2) otherwise."""
    if vendor_dir is None or str(vendor_dir) == "":
        raise SnapshotError("backend remote-code needs --vendor-dir PATH: a local DeepSeek-OCR snapshot directory")
    root = Path(vendor_dir).expanduser().resolve()
    check_vendor_dir(root)
    missing = [name for name in (*CODE_FILES, CONFIG_FILE) if not (root / name).is_file()]
    if missing:
        raise SnapshotError(
            f"{root / missing[0]}: missing from the snapshot ({', '.join(missing)} absent): "
            "copy the official DeepSeek-OCR files into the vendor dir"
        )
    config = _read_config(root / CONFIG_FILE)
    # Every .py in the snapshot may be imported by the others: hash them all.
    code = sorted({*CODE_FILES, *(p.name for p in root.glob("*.py"))})
    hashes = {name: sha256_file(root / name) for name in code}
    hashes[CONFIG_FILE] = sha256_file(root / CONFIG_FILE)
    weights = tuple(sorted(p.name for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()))
    has_tok = any((root / name).is_file() for name in TOKENIZER_FILES)
    return Snapshot(root=root, config=config, code_hashes=hashes, has_tokenizer=has_tok, weight_files=weights)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: not readable JSON ({exc}): restore the snapshot's config.json") from exc
    if not isinstance(config, dict):
        raise SnapshotError(f"{path}: expected a JSON object: restore the snapshot's config.json")
    archs = config.get("architectures") or []
    if ARCHITECTURE not in archs:
        raise SnapshotError(
            f"{path}: architectures={archs!r} does not name {ARCHITECTURE}: "
            "this is not a DeepSeek-OCR snapshot (point --vendor-dir at one)"
        )
    auto_map = config.get("auto_map") or {}
    for key in ("AutoConfig", "AutoModel"):
        ref = auto_map.get(key, "")
        if not isinstance(ref, str) or ref.count(".") != 1 or not ref.startswith(MODEL_MODULE + "."):
            raise SnapshotError(
                f"{path}: auto_map.{key}={ref!r} must be '{MODEL_MODULE}.<Class>': restore the official config.json"
            )
    lang = config.get("language_config")
    for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
        if not isinstance(config.get(key), int) and not (isinstance(lang, dict) and isinstance(lang.get(key), int)):
            raise SnapshotError(f"{path}: field {key!r} missing or not an integer: restore the snapshot's config.json")
    return config
