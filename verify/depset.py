"""The tested dependency set: read it, check an install against it, regenerate it.

`constraints/tested.txt` pins every package the project pulls in (its dependency closure,
read from the installed metadata) except torch and what only torch pulls in, so a user's
own CUDA build of torch survives `pip install -c constraints/tested.txt`.

    python -m verify.depset check    # installed versions vs the tested set, exit 1 on a mismatch
    python -m verify.depset freeze   # print a new tested set from this environment
    python -m verify.depset merge constraints/transformers-5.23.txt
                                     # the tested set with that release's pins in place of its own
    python -m verify.depset alone constraints/transformers-5.25.txt
                                     # the pins that release installs without their dependencies, after the rest
    python -m verify.depset ends     # the release files of the oldest and newest verified releases (CI gates them)

A supported release other than the newest is a small file beside tested.txt
(`constraints/transformers-X.Y.txt`) naming only the pins that differ: one place per fact.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTED_FILE = ROOT / "constraints" / "tested.txt"
EXTRAS = ("vendor", "dev")
KEPT_AS_INSTALLED = ("torch",)  # never pinned: a CUDA build must not be replaced
CORE = (
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "hydra-core",
    "omegaconf",
    "pandas",
    "rich",
    "pillow",
    "fvcore",
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")
HEADER = """\
# The tested dependency set: the exact library versions dsocr-flopcheck was last verified with.
# scripts/setup.sh installs with `pip install -c constraints/tested.txt -e ".[vendor,dev]"`.
#
# torch is deliberately absent, and so are the packages only torch pulls in (sympy, mpmath,
# networkx, jinja2, markupsafe): a user's own CUDA build of torch is kept as installed.
# The versions the gate ran with are in every report (environment.torch).
#
# Update deliberately, never by hand-editing one line: run the drift job
# (`bash scripts/drift.sh`), read its diff, fix the analytic profile if the library really
# changed the computation, then regenerate this file from the verified environment
# (docs/dependencies.md, "Upgrading transformers"). tests/test_tested_deps.py checks an install against it.
"""


class DepsetError(ValueError):
    """The tested-set file or the project metadata cannot be read; the message names the fix."""


def normalize(name: str) -> str:
    """PEP 503 name: 'huggingface_hub' and 'Huggingface-Hub' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = TESTED_FILE) -> dict[str, str]:
    """{normalized name: version}; every non-comment line must be an exact `name==version` pin."""
    if not path.is_file():
        raise DepsetError(f"{path} not found: run from a checkout of dsocr-flopcheck")
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if not m:
            raise DepsetError(f"{path}:{n}: {line!r} is not an exact pin: write name==version")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


_NO_DEPS = re.compile(r"^#\s*install-without-dependencies:\s*(.+?)\s*$")


def merged_pins(release: Path, base: Path = TESTED_FILE) -> dict[str, str]:
    """The tested set with ``release``'s pins in place of the same packages' (a package only the release names
    is added): what an install for ``DSOCR_DEPS=<release file stem>`` holds (`scripts/setup.sh`)."""
    return {**read_pins(base), **read_pins(release)}


def without_dependencies(release: Path) -> tuple[str, ...]:
    """Packages a release file installs on their own, after the rest (``# install-without-dependencies: NAME``):
    a release whose published requirements cannot be met here but which runs without them (transformers 5.25.0
    asks for a `kernels` the registry does not serve; it imports it only when present)."""
    names: list[str] = []
    for line in release.read_text(encoding="utf-8").splitlines():
        m = _NO_DEPS.match(line.strip())
        if m:
            names += [normalize(n) for n in re.split(r"[,\s]+", m.group(1)) if n]
    pins = read_pins(release)
    missing = [n for n in names if n not in pins]
    if missing:
        raise DepsetError(f"{release}: install-without-dependencies names {', '.join(missing)}, which it does not pin")
    return tuple(names)


def resolvable_pins(release: Path, base: Path = TESTED_FILE) -> dict[str, str]:
    """The constraints pip resolves the project with for ``release``: its merged pins, except that the packages it
    installs on their own keep the tested set's pins until they are replaced (`without_dependencies`)."""
    alone = without_dependencies(release)
    return {n: v for n, v in merged_pins(release, base).items() if n not in alone} | {
        n: v for n, v in read_pins(base).items() if n in alone
    }


def release_files(folder: Path = TESTED_FILE.parent) -> dict[str, Path]:
    """{stem: path} of the supported releases' overlay files beside the tested set (not tested.txt itself)."""
    return {p.stem: p for p in sorted(folder.glob("*.txt")) if p != folder / TESTED_FILE.name}


def range_ends(verified: tuple[str, ...], folder: Path = TESTED_FILE.parent) -> list[str]:
    """The release files of the oldest and the newest of the ``verified`` transformers releases (by minor release),
    leaving out the one the tested set pins (its venv is the default one): what CI gates beside the tested set."""
    from core.releases import minor, release_key  # needs omegaconf: only once the project is installed

    tested = read_pins(folder / TESTED_FILE.name).get("transformers")
    ends = []
    for v in sorted({min(verified, key=release_key), max(verified, key=release_key)}, key=release_key):
        if v != tested:
            name = "transformers-{}.{}".format(*minor(v))
            if name not in release_files(folder):
                raise DepsetError(f"verified release {v} has no constraints/{name}.txt: write the pins that differ")
            ends.append(name)
    return ends


def project_requirements(root: Path = ROOT, extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The project's own requirement strings (base dependencies plus the named extras) from pyproject.toml."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise DepsetError(f"cannot read {root / 'pyproject.toml'} ({exc}): run from a checkout") from exc
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def closure(requirements: list[str], stop: tuple[str, ...] = KEPT_AS_INSTALLED) -> dict[str, str | None]:
    """{name: installed version or None} of everything `requirements` pull in, not descending into `stop`."""
    from packaging.requirements import Requirement  # a transformers dependency; only needed here

    found: dict[str, str | None] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist.version
        if name in stop:
            continue
        extras = set(req.extras) | {""}
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return found


def mismatches(pins: dict[str, str], required: tuple[str, ...] = CORE) -> list[str]:
    """One line per pinned package whose installed version differs (or a core package that is missing)."""
    out = []
    for name, want in sorted(pins.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in required:
                out.append(f"{name}: tested {want}, not installed")
            continue
        if have != want:
            out.append(f"{name}: tested {want}, installed {have}")
    return out


def unpinned(pins: dict[str, str], root: Path = ROOT) -> list[str]:
    """Installed packages the project pulls in that the tested set does not pin (torch excepted)."""
    deps = closure(project_requirements(root))
    return sorted(n for n, v in deps.items() if v is not None and n not in pins and n not in KEPT_AS_INSTALLED)


def freeze(root: Path = ROOT) -> str:
    """A new tested-set file from this environment: the closure minus torch's own subtree."""
    deps = closure(project_requirements(root))
    missing = sorted(n for n, v in deps.items() if v is None)
    if missing:
        raise DepsetError(f"not installed: {', '.join(missing)}: run scripts/setup.sh in this environment first")
    torch_version = deps.get("torch")
    lines = [HEADER.rstrip("\n")]
    if torch_version:
        lines.append(f"# Tested with: torch {torch_version}, Python {sys.version_info.major}.{sys.version_info.minor}.")
    lines += [f"{n}=={v}" for n, v in sorted(deps.items()) if n not in KEPT_AS_INSTALLED]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verify.depset", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("check", "freeze", "merge", "alone", "ends"))
    p.add_argument("release", nargs="?", type=Path, help="merge: a release overlay file (constraints/NAME.txt)")
    p.add_argument("--constraints", type=Path, default=TESTED_FILE, help="the tested-set file (check)")
    p.add_argument("--release", dest="check_release", type=Path, help="check: against the tested set + this overlay")
    args = p.parse_args(argv)
    try:
        if args.action == "freeze":
            sys.stdout.write(freeze())
            return 0
        if args.action == "ends":
            from core.releases import release_table  # the verified releases: the analytic profile's table

            print(" ".join(range_ends(release_table("hf").verified["transformers"])))
            return 0
        if args.action in ("merge", "alone"):
            if args.release is None:
                raise DepsetError(
                    f"{args.action} needs a release file: python -m verify.depset merge constraints/NAME.txt"
                )
            if args.action == "merge":
                pins = resolvable_pins(args.release, args.constraints)
            else:
                pins = {n: v for n, v in read_pins(args.release).items() if n in without_dependencies(args.release)}
            sys.stdout.write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
            return 0
        pins = merged_pins(args.check_release, args.constraints) if args.check_release else read_pins(args.constraints)
        bad = mismatches(pins) + [f"{n}: installed, not in the tested set" for n in unpinned(pins)]
    except DepsetError as exc:
        print(f"depset: error: {exc}", file=sys.stderr)
        return 2
    for line in bad:
        print(line)
    print(
        f"tested set: {len(bad)} difference(s) from {args.constraints}"
        if bad
        else f"tested set: all {len(pins)} pins match"
    )
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
