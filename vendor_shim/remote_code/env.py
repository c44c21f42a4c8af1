"""The pinned environment the official code runs in, created on demand and reused.

The official DeepSeek-OCR code needs transformers 4.46.x, while the main environment runs
transformers 5.x.  Rather than downgrade anything, we ``pip install --no-deps --target``
exactly the packages below into ``<cache>/remote-env-<key>`` and put that folder first on
the worker subprocess's PYTHONPATH.  torch, numpy, pillow, safetensors, regex, pyyaml,
tqdm, packaging and filelock come from the main environment (`--no-deps` guarantees pip
never pulls another torch).  The folder is built in a temporary sibling and renamed into
place, so a crash never leaves a half-built environment that looks complete; its name is
keyed by the pins and the Python version, so changing a pin builds a new one.

Cache root: ``$DSOCR_CACHE_DIR`` if set, else ``~/.cache/dsocr-flopcheck``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vendor_shim.errors import InfrastructureError

# transformers 4.46.3 is the version the official config.json names ("transformers_version").
PINS: tuple[str, ...] = (
    "transformers==4.46.3",
    "tokenizers==0.20.3",  # transformers 4.46 requires tokenizers <0.21
    "huggingface-hub==0.26.5",  # transformers 4.46 requires huggingface-hub <1.0
    "einops==0.8.2",  # deepencoder.py, modeling_deepseekv2.py
    "easydict==1.14",  # deepencoder.py
    "addict==2.4.0",  # modeling_deepseekocr.py
    "requests==2.34.2",  # modeling_deepseekocr.py, huggingface-hub
    "urllib3==2.8.0",
    "idna==3.20",
    "charset-normalizer==3.5.2",
    "certifi==2026.10.18",
)
# Imported by transformers 4.46 or the official code, taken from the main environment.
BORROWED = ("torch", "numpy", "PIL", "safetensors", "regex", "yaml", "tqdm", "packaging", "filelock")
ENV_ENV_VAR = "DSOCR_REMOTE_ENV"  # points at a ready environment folder: skips creation
CACHE_ENV_VAR = "DSOCR_CACHE_DIR"
MARKER = "dsocr-env.json"


@dataclass(frozen=True)
class PinnedEnv:
    path: Path
    pins: tuple[str, ...]
    key: str

    def pythonpath(self, extra: list[str] | None = None) -> str:
        parts = [str(self.path), *(extra or [])]
        if os.environ.get("PYTHONPATH"):
            parts.append(os.environ["PYTHONPATH"])
        return os.pathsep.join(parts)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "dsocr-flopcheck").expanduser()


def env_key(pins: tuple[str, ...] = PINS) -> str:
    """Short hash of the pins and the interpreter's major.minor (wheels are per-Python)."""
    text = json.dumps({"pins": list(pins), "python": f"{sys.version_info[0]}.{sys.version_info[1]}"})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_env(pins: tuple[str, ...] = PINS, root: Path | None = None, timeout_s: float = 600) -> PinnedEnv:
    """The ready environment for ``pins``, built now if absent (about 10 s with a warm pip cache)."""
    override = os.environ.get(ENV_ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not (path / "transformers").is_dir():
            raise InfrastructureError(
                f"{ENV_ENV_VAR}={path} holds no transformers package: unset it or point it at an environment"
            )
        return PinnedEnv(path, pins, "override")
    key = env_key(pins)
    base = root or cache_root()
    final = base / f"remote-env-{key}"
    if (final / MARKER).is_file():
        return PinnedEnv(final, pins, key)
    try:
        return _build(pins, key, base, final, timeout_s)
    except OSError as exc:  # the cache folder, not the vendor: read-only, full, a file in the way
        raise InfrastructureError(
            f"environment cache {base} cannot take the pinned remote-code environment ({exc.strerror or exc}): "
            f"make it writable or point {CACHE_ENV_VAR} at a writable folder"
        ) from exc


def _build(pins: tuple[str, ...], key: str, base: Path, final: Path, timeout_s: float) -> PinnedEnv:
    """Build the environment in a temporary sibling of `final` and rename it into place."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".remote-env-{key}-", dir=base))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"]
        cmd += ["--target", str(tmp), *pins]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise InfrastructureError(
                f"building the pinned environment timed out after {timeout_s:.0f} s: check PyPI access"
            ) from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise InfrastructureError(
                f"pip could not build the pinned remote-code environment ({tail[0]}): check PyPI access"
            )
        _check_imports(tmp)
        (tmp / MARKER).write_text(json.dumps({"pins": list(pins), "key": key}, indent=1))
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MARKER).is_file():  # lost a race to a half-built folder: should not happen
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PinnedEnv(final, pins, key)


def broken_env_message(path: Path | str, reason: str) -> str:
    """The one line for a pinned environment that no longer imports (a corrupted or half-deleted file)."""
    return (
        f"pinned remote-code environment {path} is broken ({reason}): an environment cache fault, not the "
        f"vendor's; delete {path} to rebuild it"
    )


def _check_imports(path: Path) -> None:
    """The fresh env must import with the main torch before it is marked ready."""
    probe = (
        "import torch, transformers, tokenizers, einops, easydict, addict, requests; print(transformers.__version__)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        missing = ", ".join(BORROWED)
        raise InfrastructureError(
            f"the pinned remote-code environment does not import ({tail}): the main env must provide {missing}"
        )
