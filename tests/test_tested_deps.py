"""The install is the tested dependency set, so a fresh setup runs the library versions the gate was verified with.

The version check reads `importlib.metadata` directly and parses constraints/tested.txt itself (independent of
`verify.depset`, which writes that file). It is skipped, saying so, in an environment set up with the newest
releases on purpose (`DSOCR_DEPS=latest bash scripts/setup.sh`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from verify import depset

ROOT = Path(__file__).resolve().parents[1]
TESTED = ROOT / "constraints" / "tested.txt"
CORE = ("transformers", "tokenizers", "huggingface-hub", "safetensors", "hydra-core", "omegaconf")
CORE += ("pandas", "rich", "pillow", "fvcore")


def _read(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def _installed_set() -> str:
    """What this venv was set up with (scripts/setup.sh writes it): tested, latest or a release's file stem."""
    marker = Path(sys.prefix) / "dsocr-deps"
    return os.environ.get("DSOCR_DEPS") or (marker.read_text().strip() if marker.is_file() else "tested")


def _release_option() -> list[str]:
    name = _installed_set()
    return [] if name in ("tested", "latest") else ["--release", str(ROOT / "constraints" / f"{name}.txt")]


def _pins() -> dict[str, str]:
    """The tested set; in a venv set up for another supported release, with that release's pins in place."""
    pins = _read(TESTED)
    release = ROOT / "constraints" / f"{_installed_set()}.txt"
    if _installed_set() not in ("tested", "latest") and release.is_file():
        pins.update(_read(release))
    return pins


def _latest_reason() -> str | None:
    if os.environ.get("DSOCR_DEPS") == "latest":
        return "DSOCR_DEPS=latest: this environment holds the newest releases on purpose, not the tested set"
    marker = Path(sys.prefix) / "dsocr-deps"
    if marker.is_file() and marker.read_text().strip() == "latest":
        return f"{marker} says latest: this venv was set up with DSOCR_DEPS=latest, not the tested set"
    return None


needs_tested_env = pytest.mark.skipif(_latest_reason() is not None, reason=_latest_reason() or "")


def test_tested_set_pins_exact_versions_of_the_core_libraries_and_leaves_torch_out():
    pins = _read(TESTED)
    assert set(CORE) <= set(pins), sorted(set(CORE) - set(pins))
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), "every line must be name==version"
    assert "torch" not in pins and not any(n.startswith(("nvidia-", "triton")) for n in pins)
    assert depset.read_pins(TESTED) == _read(TESTED)  # the module reads the file the same way


@needs_tested_env
def test_installed_versions_are_the_tested_set():
    wrong = {}
    for name, want in _pins().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in CORE:
                wrong[name] = (want, "not installed")
            continue
        if have != want:
            wrong[name] = (want, have)
    assert not wrong, f"installed != tested (name: (tested, installed)): {wrong}; run bash scripts/setup.sh"


@needs_tested_env
def test_tested_set_covers_every_package_the_project_pulls_in():
    """A dependency added to pyproject.toml (or pulled in by a tested library) must be pinned too."""
    assert depset.unpinned(_pins(), ROOT) == []


def test_read_pins_refuses_a_range_naming_the_fix(tmp_path):
    bad = tmp_path / "tested.txt"
    bad.write_text("# ok\ntransformers>=5.0\n")
    with pytest.raises(depset.DepsetError, match=r"tested.txt:2: .*not an exact pin: write name==version"):
        depset.read_pins(bad)


@needs_tested_env
def test_depset_check_cli_agrees():
    out = subprocess.run(
        [sys.executable, "-m", "verify.depset", "check", *_release_option()],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"all {len(_pins())} pins match" in out.stdout
