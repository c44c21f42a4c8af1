"""The analytic package must stay formula-only: no torch, transformers, fvcore or vendor code."""

import ast
import subprocess
import sys
from pathlib import Path

import analytic

FORBIDDEN = ("torch", "transformers", "fvcore", "vendor_shim")
ROOT = Path(analytic.__file__).resolve().parent


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module",
            "__import__",
        ):
            roots |= {
                a.value.split(".")[0] for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
            }
    return roots


def test_sources_import_nothing_forbidden():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) >= 8
    bad = {str(f.relative_to(ROOT)): sorted(_imported_roots(f) & set(FORBIDDEN)) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_running_the_model_loads_nothing_forbidden():
    code = (
        "import sys\n"
        "from analytic import VisionWorkload\n"
        "from analytic.model import build_cost_model\n"
        "import analytic.cli\n"
        "w = VisionWorkload.from_page(1654, 2339, 'gundam', decode_tokens=2)\n"
        "build_cost_model().estimate(w, records=True)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_core_imports_only_core():
    """`core` is the bottom layer every package shares: torch-free and importing no other package of ours."""
    import core

    ours = {"analytic", "vendor_shim", "verify", "reports", "drift", "benchmarks"}
    files = sorted(Path(core.__file__).resolve().parent.rglob("*.py"))
    bad = {f.name: sorted(_imported_roots(f) & (set(FORBIDDEN) | ours)) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}
