"""`run_verify_end2end` / `run_verify_end2end_vision` called in-process: the exit-code contract and the reports.

0 pass, 1 discrepancy, 2 bad input or usage (no report), 3 the vendor run failed.  Every PASS below is
two independent paths agreeing (the analytic formulas vs the counted execution of real model code), and
every FAIL is provoked by changing one side only; no expected number is copied from a measurement.

Most runs are vision-only on the meta device (hf backend: shapes only, about a second a page).  The
trace cache goes to a fresh DSOCR_CACHE_DIR per test, except for the remote-code tests: their pinned
transformers-4.46 environment lives under the real cache base (built once per machine, see
vendor_shim.remote_code.env.cache_root), so they keep DSOCR_CACHE_DIR and pass --cache-dir instead.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import verify.runner
from analytic.schema import OP_FAMILIES, STAGES, VISION_STAGES
from verify.cli import main_end2end, main_vision
from verify.runner import VendorFailure

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "datasets" / "fixtures" / "tiny_remote_snapshot"
REPORT_FILES = {"report.md", "report.csv", "report.json"}
N_METRICS = 6  # analytic.schema.METRICS


def run_cli(main, *argv: Any) -> int:
    """The process exit code of a console script: argparse's own errors exit through SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh cache base (traces, rendered pages) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(path))
    return path


@pytest.fixture
def vendor_calls(monkeypatch) -> list[Any]:
    """Counts real vendor measurements (cache hits never reach vendor_shim.measure.measure)."""
    calls: list[Any] = []
    module = importlib.import_module("vendor_shim.measure")  # the package re-exports the function under that name
    real = module.measure

    def counting(workload, **kw):
        calls.append(workload)
        return real(workload, **kw)

    monkeypatch.setattr(module, "measure", counting)
    return calls


def the_run_dir(out: Path) -> Path:
    """The one run directory under OUTPUT_DIR, holding exactly the three reports and nothing half-written."""
    entries = sorted(out.iterdir())
    assert len(entries) == 1, f"expected one run dir, found {[e.name for e in entries]}"
    run_dir = entries[0]
    assert run_dir.is_dir() and not run_dir.name.startswith(".")
    assert {p.name for p in run_dir.iterdir()} == REPORT_FILES
    return run_dir


def report(out: Path) -> dict[str, Any]:
    return json.loads((the_run_dir(out) / "report.json").read_text())


def csv_rows(out: Path) -> list[dict[str, str]]:
    with (the_run_dir(out) / "report.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def squash(text: str) -> str:
    """Console text without any whitespace: rich wraps (and folds long paths) at 80 columns off a terminal."""
    return "".join(text.split())


def write_png(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height), "white").save(path)
    return path


# ---- 0: a passing run, its reports, and the cache --------------------------------------------------


def test_vision_pass_exit_0_writes_three_reports(cache_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 3, "--output-dir", out) == 0  # with the progress bar
    run_dir = the_run_dir(out)
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# Verdict: PASS\n")
    doc = report(out)
    assert doc["verdict"] == "PASS" and doc["synthetic_pages"] is True
    assert doc["command"] == "run_verify_end2end_vision" and doc["config"]["stages"] == list(VISION_STAGES)
    assert [p["passed"] for p in doc["pages"]] == [True, True, True]
    assert all(p["trace"]["complete"] for p in doc["pages"])
    # CSV: 3 pages x (3 stages x 2 branches) x 6 metrics; tensor_flops gated, the rest reported only.
    rows = csv_rows(out)
    assert len(rows) == 3 * 6 * N_METRICS
    gated = [r for r in rows if r["metric"] == "tensor_flops"]
    assert len(gated) == 18 and {r["passed"] for r in gated} == {"True"}
    assert {r["passed"] for r in rows if r["metric"] != "tensor_flops"} == {""}
    assert squash(str(run_dir)) in squash(capsys.readouterr().out)  # the summary names the reports


def test_second_run_is_served_from_the_cache_and_no_cache_measures_again(cache_dir, tmp_path, vendor_calls):
    args = ("--limit", 3, "--quiet")
    assert run_cli(main_vision, *args, "--output-dir", tmp_path / "cold") == 0
    cold = report(tmp_path / "cold")
    # Pages with one workload signature share a vendor run. acad-a4 1654x2339 (aspect 0.707) and book-a5
    # 874x1240 (0.705) both get the 2x3 crop grid, the 320x240 thumbnail none: 2 signatures for 3 pages.
    assert [p["workload"]["n_crops"] for p in cold["pages"]] == [6, 6, 0]
    assert len(vendor_calls) == 2
    assert [p["cache_hit"] for p in cold["pages"]] == [False, True, False]
    assert (cache_dir / "traces").is_dir()

    vendor_calls.clear()
    assert run_cli(main_vision, *args, "--output-dir", tmp_path / "warm") == 0
    warm = report(tmp_path / "warm")
    assert vendor_calls == []
    assert [p["cache_hit"] for p in warm["pages"]] == [True, True, True]
    assert [p["rows"] for p in warm["pages"]] == [p["rows"] for p in cold["pages"]]

    assert run_cli(main_vision, *args, "--no-cache", "--output-dir", tmp_path / "nocache") == 0
    assert len(vendor_calls) == 2
    assert report(tmp_path / "nocache")["environment"]["cache"] == "disabled"


# ---- 1: a discrepancy provoked on the analytic side only -------------------------------------------


@pytest.fixture(scope="module")
def clip_23_layers(tmp_path_factory) -> tuple[int, Path]:
    """The analytic CLIP one layer short of the vendor's 24; pages: A4 portrait (2x3 crops), A5, a thumbnail."""
    tmp = tmp_path_factory.mktemp("clip23")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSOCR_CACHE_DIR", str(tmp / "cache"))
        code = run_cli(
            main_vision, "--limit", 3, "--quiet", "--override", "vision.clip.num_layers=23", "--output-dir", tmp / "o"
        )
    return code, tmp / "o"


def test_analytic_override_discrepancy_exit_1_marks_rows_and_names_a_family(clip_23_layers):
    code, out = clip_23_layers
    assert code == 1
    md = (the_run_dir(out) / "report.md").read_text()
    assert md.startswith("# Verdict: FAIL\n")
    assert "## Failures" in md and md.index("## Failures") < md.index("## Environment")
    doc = report(out)
    assert doc["verdict"] == "FAIL"
    failing = [r for p in doc["pages"] for r in p["rows"] if r["passed"] is False]
    # The CLIP stack is 24 identical layers and nothing else CLIP-side is a tensor op (its inputs are SAM
    # features), so 23 analytic layers give analytic = 23/24 vendor: rel delta 1/24 = 4.17% > 1%.
    assert failing and {(r["stage"], r["metric"]) for r in failing} == {("clip", "tensor_flops")}
    for r in failing:
        assert r["rel_delta"] == pytest.approx(1 / 24) and r["tolerance"] == 0.01
        assert r["analytic"] * 24 == r["vendor"] * 23
        assert r["gap_family"] in OP_FAMILIES
    # Each page fails CLIP global; the 320x240 thumbnail has no crops (0 == 0 passes), the other two fail crops.
    assert len(failing) == 3 + 2
    thumb = next(p for p in doc["pages"] if p["workload"]["n_crops"] == 0)
    assert next(r["passed"] for r in thumb["rows"] if (r["stage"], r["part"]) == ("clip", "crops")) is True
    # The CSV marks the same rows, and every other gated row passes.
    rows = [r for r in csv_rows(out) if r["metric"] == "tensor_flops"]
    bad = {(r["page_id"], r["part"]) for r in rows if r["passed"] == "False"}
    assert bad == {(r["page_id"], r["part"]) for r in failing}
    assert all(r["gap_family"] for r in rows if r["passed"] == "False")
    assert {r["passed"] for r in rows if r["stage"] != "clip"} == {"True"}


def test_missing_clip_layer_gap_is_named_mm(clip_23_layers):
    # One CLIP-L layer over 257 tokens: linears 2*257*(4*1024*1024 + 2*1024*4096) = 6.47 GFLOP of mm;
    # attention 2 * 2*16*257*257*64 = 0.27 GFLOP. The missing work is overwhelmingly mm.
    _, out = clip_23_layers
    failing = [r for p in report(out)["pages"] for r in p["rows"] if r["passed"] is False]
    assert {r["gap_family"] for r in failing} == {"mm"}


# ---- 2: bad input or usage: one message, no report -------------------------------------------------


def _broken_omnidocbench(tmp_path: Path) -> Path:
    root = tmp_path / "odb"
    root.mkdir()
    (root / "OmniDocBench.json").write_text('[{"page_info": ')  # truncated download
    return root


USAGE_CASES = {
    "unknown-mode": (main_vision, ["--mode", "huge"], "invalid choice: 'huge'"),
    "negative-decode-tokens": (main_end2end, ["--decode-tokens", "-1"], "--decode-tokens must be >= 0"),
    "negative-limit": (main_vision, ["--limit", "-1"], "--limit must be >= 0"),
    "no-pages": (main_vision, ["--limit", "0"], "no pages selected"),
    "missing-omnidocbench": (main_vision, ["--omnidocbench", "{tmp}/nowhere"], "is not a directory"),
    "unreadable-omnidocbench": (main_vision, ["--omnidocbench", "{odb}"], "OmniDocBench.json is unreadable"),
    "remote-code-no-dir": (main_vision, ["--backend", "remote-code"], "needs --vendor-dir"),
    "remote-code-missing-dir": (
        main_vision,
        ["--backend", "remote-code", "--vendor-dir", "{tmp}/nowhere", "--trust-remote-code"],
        "does not exist",
    ),
    "remote-code-untrusted": (
        main_vision,
        ["--backend", "remote-code", "--vendor-dir", str(TINY)],
        "add --trust-remote-code",
    ),
    "meta-end2end": (main_end2end, ["--device", "meta"], "--device meta cannot run the decoder"),
    "tolerance-too-big": (main_vision, ["--tolerance", "sam=0.5"], "outside [0, 0.05]"),
    "tolerance-bad-stage": (main_vision, ["--tolerance", "vit=0.01"], "bad --tolerance 'vit=0.01'"),
    "tolerance-bad-value": (main_vision, ["--tolerance", "sam=lots"], "bad tolerance value"),
    "tolerance-default": (main_vision, ["--tolerance-default", "0.2"], "outside [0, 0.05]"),
    "override-bad-key": (main_vision, ["--override", "vision.clip.no_such_key=3"], "no_such_key"),
    "override-bad-syntax": (main_vision, ["--override", "vision.clip.num_layers"], "analytic config override"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_bad_usage_exit_2_without_report(case, cache_dir, tmp_path, capsys):
    main, argv, message = USAGE_CASES[case]
    subst = {"tmp": str(tmp_path), "odb": str(_broken_omnidocbench(tmp_path)) if "{odb}" in argv else ""}
    argv = [a.format(**subst) for a in argv]
    out = tmp_path / "runs"
    assert run_cli(main, *argv, "--quiet", "--output-dir", out) == 2
    err = squash(capsys.readouterr().err)
    assert squash(message) in err and "error:" in err
    assert not out.exists()


def test_usage_error_is_one_line(cache_dir, tmp_path, capsys):
    run_cli(main_end2end, "--device", "meta", "--output-dir", tmp_path / "runs")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_every_image_corrupt_exit_2_without_run_dir(cache_dir, tmp_path, capsys):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", bad, empty, "--quiet", "--output-dir", out) == 2
    err = squash(capsys.readouterr().err)
    assert "scan.png" in err and "empty.jpg" in err and "re-export" in err
    assert not out.exists()


def test_mixed_good_and_corrupt_images_report_both_exit_2(cache_dir, tmp_path):
    good = write_png(tmp_path / "good.png", 500, 400)  # gundam: both sides <= 640 -> global view only
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "runs"
    # Precedence (verify.runner.exit_code): no discrepancy and no vendor failure, an input error -> 2.
    assert run_cli(main_vision, "--images", good, bad, "--quiet", "--output-dir", out) == 2
    doc = report(out)
    assert doc["verdict"] == "ERROR"
    pages = {p["page"]["page_id"]: p for p in doc["pages"]}
    assert pages["bad"]["error_kind"] == "input" and "bad.png" in pages["bad"]["error"]
    assert pages["bad"]["rows"] == [] and pages["bad"]["passed"] is False
    assert pages["good"]["passed"] is True and pages["good"]["error"] is None
    assert (pages["good"]["workload"]["width"], pages["good"]["workload"]["n_crops"]) == (500, 0)
    assert {r["page_id"] for r in csv_rows(out)} == {"good"}
    md = (the_run_dir(out) / "report.md").read_text()
    assert md.startswith("# Verdict: ERROR\n") and "could not be verified" in md and "bad.png" in md


# ---- 3: the vendor run failed ----------------------------------------------------------------------


def test_vendor_failure_exit_3_keeps_every_page(cache_dir, tmp_path, monkeypatch):
    def failing(self, workload):
        raise VendorFailure("VendorRunError: out of memory while counting")

    monkeypatch.setattr("verify.vendor_measure.VendorMeasurer._measure", failing)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 2, "--quiet", "--output-dir", out) == 3
    doc = report(out)
    assert doc["verdict"] == "ERROR" and len(doc["pages"]) == 2
    for page in doc["pages"]:
        assert page["error_kind"] == "vendor" and "out of memory" in page["error"]
        assert page["analytic"] is not None  # the analytic side still ran
    assert "out of memory" in (the_run_dir(out) / "report.md").read_text()


def test_remote_code_snapshot_that_raises_exit_3(tmp_path):
    snap = tmp_path / "snapshot"
    shutil.copytree(TINY, snap, ignore=shutil.ignore_patterns("__pycache__"))
    enc = snap / "deepencoder.py"
    anchor = "        x = self.patch_embed(x).permute(0, 2, 3, 1)\n"
    text = enc.read_text()
    assert anchor in text
    enc.write_text(text.replace(anchor, '        raise RuntimeError("broken on purpose")\n' + anchor, 1))
    out = tmp_path / "runs"
    argv = ["--backend", "remote-code", "--vendor-dir", snap, "--trust-remote-code", "--limit", 1, "--quiet"]
    assert run_cli(main_vision, *argv, "--cache-dir", tmp_path / "traces", "--output-dir", out) == 3
    (page,) = report(out)["pages"]
    assert page["error_kind"] == "vendor" and "broken on purpose" in page["error"]
    assert not (tmp_path / "traces").exists() or not any((tmp_path / "traces").rglob("*.json"))  # nothing cached


# ---- end to end (vision + prefill + decode) --------------------------------------------------------

# The analytic model set to the tiny snapshot's dims (its config.json and deepencoder.py).
TINY_OVERRIDES = [
    "vision.sam.embed_dim=16",
    "vision.sam.depth=2",
    "vision.sam.num_heads=2",
    "vision.sam.global_attn_indexes=[1]",
    "vision.sam.out_chans=16",
    "vision.sam.downsample_channels=[32,64]",
    "vision.clip.hidden_size=64",
    "vision.clip.num_layers=2",
    "vision.clip.num_heads=2",
    "vision.clip.ffn_hidden_size=128",
    "projector.input_dim=128",
    "projector.n_embed=32",
    "decoder.hidden_size=32",
    "decoder.intermediate_size=64",
    "decoder.num_layers=2",
    "decoder.num_heads=2",
    "decoder.num_kv_heads=2",
    "decoder.moe_intermediate_size=16",
    "decoder.n_routed_experts=4",
    "decoder.num_experts_per_tok=2",
    "decoder.n_shared_experts=1",
]


def test_remote_code_end_to_end_tiny_snapshot_exit_0(tmp_path):
    out = tmp_path / "runs"
    argv = ["--backend", "remote-code", "--vendor-dir", TINY, "--trust-remote-code", "--limit", 3]
    argv += ["--decode-tokens", 3, "--dtype", "float32", "--quiet", "--cache-dir", tmp_path / "traces"]
    for ov in TINY_OVERRIDES:
        argv += ["--override", ov]
    assert run_cli(main_end2end, *argv, "--output-dir", out) == 0
    doc = report(out)
    assert doc["verdict"] == "PASS" and doc["config"]["stages"] == list(STAGES)
    for page in doc["pages"]:
        gated = [r for r in page["rows"] if r["passed"] is not None]
        assert len(gated) == 10 and all(r["rel_delta"] == 0 for r in gated)  # exact agreement, every leaf
        assert len(page["trace"]["stages"]["decode"]["steps"]) == 3
        assert page["workload"]["lm_head_scope"] == "all"  # the official forward projects every position
    env = doc["environment"]
    assert Path(env["vendor_dir"]).resolve() == TINY.resolve()
    for name in ("deepencoder.py", "modeling_deepseekocr.py", "modeling_deepseekv2.py", "config.json"):
        assert env["code_hashes"][name] == hashlib.sha256((TINY / name).read_bytes()).hexdigest()
    md = (the_run_dir(out) / "report.md").read_text()
    assert md.startswith("# Verdict: PASS\n") and env["code_hashes"]["deepencoder.py"] in md


@pytest.mark.slow
def test_hf_end_to_end_full_size_one_page(cache_dir, tmp_path):
    """The full DeepSeek-OCR dims (12-layer MoE decoder) on CPU, vision on meta: 15 s on 2 idle cores, ~40 s busy."""
    out = tmp_path / "runs"
    assert run_cli(main_end2end, "--limit", 1, "--decode-tokens", 2, "--quiet", "--output-dir", out) == 0
    (page,) = report(out)["pages"]
    assert page["passed"] and page["trace"]["complete"]
    gated = {(r["stage"], r["part"]): r for r in page["rows"] if r["passed"] is not None}
    assert set(gated) == {
        (s, p) for s in STAGES for p in (("global", "crops") if s in VISION_STAGES else ("decoder", "lm_head"))
    }
    assert all(r["rel_delta"] == 0 for r in gated.values())
    # decode: 2 single-token steps; hf generate keeps only the last position's logits in prefill
    assert len(page["trace"]["stages"]["decode"]["steps"]) == 2
    assert page["workload"]["lm_head_scope"] == "last"


# ---- run directories ---------------------------------------------------------------------------------


def test_two_runs_in_the_same_second_both_write_reports(cache_dir, tmp_path, monkeypatch):
    fixed = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return fixed

    monkeypatch.setattr(verify.runner, "datetime", FrozenClock)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--limit", 1, "--quiet", "--output-dir", out) == 0
    assert run_cli(main_vision, "--limit", 1, "--quiet", "--output-dir", out) == 0
    assert len(list(out.iterdir())) == 2


def test_unusable_output_dir_is_exit_2_before_any_vendor_run(cache_dir, tmp_path, vendor_calls, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run_cli(main_vision, "--limit", 1, "--quiet", "--output-dir", blocker / "runs") == 2
    assert vendor_calls == []
    assert "--output-dir" in capsys.readouterr().err
