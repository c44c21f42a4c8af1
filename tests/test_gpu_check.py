"""The GPU check's pieces that can be checked here: the scripts' syntax and the peak summary's arithmetic."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from verify.gpu_summary import find_report, main, summary_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu-check.sh", "gpu-wheels.sh"])
def test_scripts_parse(script):
    bash = shutil.which("bash")
    assert bash, "bash is needed"
    subprocess.run([bash, "-n", str(ROOT / "scripts" / script)], check=True)


def _report() -> dict:
    leaf = {"peak_bytes": 4000, "allocator_peak_bytes": 4608}
    trace = {
        "stages": {"sam": {"global": leaf, "crops": {"peak_bytes": 0, "allocator_peak_bytes": None}}},
        "timing": {"stage_wall_s": {"sam": {"global": 0.25}}},
    }
    rows = [{"stage": "sam", "part": "global", "metric": "peak_bytes", "analytic": 4000}]
    return {"pages": [{"page": {"page_id": "p1"}, "rows": rows, "trace": trace}, {"page": {"page_id": "bad"}}]}


def test_summary_puts_the_allocator_peak_next_to_the_tensor_peak(tmp_path):
    rows = summary_rows([("cuda-real", _report())])
    glob, crops = rows  # the page without a trace gives no row
    # 4,608 = 9 x 512: the allocator's rounded blocks, 4,608 / 4,000 = 1.152
    assert (glob["peak vendor"], glob["peak analytic"], glob["allocator"], glob["alloc/vendor"]) == (
        4000,
        4000,
        4608,
        1.152,
    )
    assert glob["wall s"] == 0.25 and crops["allocator"] is None and crops["alloc/vendor"] is None
    run = tmp_path / "out" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(_report()))
    assert find_report(tmp_path / "out") == run / "report.json"
    assert main([str(tmp_path / "out"), "--out", str(tmp_path / "peaks.md")]) == 0
    assert "| out | p1 | sam | global | 4,000 | 4,000 | 4,608 | 1.152 | 0.25 |" in (tmp_path / "peaks.md").read_text()
    assert main([str(tmp_path / "missing")]) == 1
