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

import contextlib
import csv
import errno
import hashlib
import importlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tiny_snapshots import tiny_snapshot

import reports
import verify.runner
from core.schema import OP_FAMILIES, STAGES, VISION_STAGES
from reports.document import read_report
from verify.cli import main_end2end, main_vision
from verify.runner import VendorFailure

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_snapshot("deepseek-ocr")
REPORT_FILES = set(reports.REPORT_FILES.values())
N_METRICS = 7  # core.metrics.METRICS
GATED = {"tensor_flops", "elementwise_flops", "weight_bytes", "kv_cache_bytes"}  # both profiles, every stage


def modeled(impl: str) -> set[str]:
    """The profile's modeled_metrics (METRIC or STAGE.METRIC): what the verifier gates."""
    from omegaconf import OmegaConf

    from core.profiles import PROFILE_DIR

    return set(OmegaConf.load(PROFILE_DIR / f"{impl}.yaml").modeled_metrics)


def is_gated(row, impl: str = "hf") -> bool:
    m = modeled(impl)
    return row["metric"] in m or f"{row['stage']}.{row['metric']}" in m


def run_cli(main, *argv: Any) -> int:
    """The process exit code of a console script: argparse's own errors exit through SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def count_vendor_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Counts real vendor measurements (cache hits never reach vendor_shim.measure.measure)."""
    calls: list[Any] = []
    module = importlib.import_module("vendor_shim.measure")  # the package re-exports the function under that name
    real = module.measure

    def counting(workload, **kw):
        calls.append(workload)
        return real(workload, **kw)

    monkeypatch.setattr(module, "measure", counting)
    return calls


@pytest.fixture
def vendor_calls(monkeypatch) -> list[Any]:
    return count_vendor_calls(monkeypatch)


def the_run_dir(out: Path) -> Path:
    """The one run directory under OUTPUT_DIR, holding exactly the three reports and nothing half-written."""
    entries = sorted(out.iterdir())
    assert len(entries) == 1, f"expected one run dir, found {[e.name for e in entries]}"
    run_dir = entries[0]
    assert run_dir.is_dir() and not run_dir.name.startswith(".")
    assert {p.name for p in run_dir.iterdir()} == REPORT_FILES
    return run_dir


def report(out: Path) -> dict[str, Any]:
    """The run's report.json with every page's decode steps in place (`reports.document.read_report`)."""
    return read_report(json.loads((the_run_dir(out) / "report.json").read_text()))


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


@dataclass(frozen=True)
class ColdRun:
    """A finished in-process run: its exit code, folders, captured stdout and the vendor measurements it made."""

    code: int
    out: Path
    cache: Path
    stdout: str
    vendor_calls: list[Any]


@pytest.fixture(scope="module")
def cold_vision_run(tmp_path_factory) -> ColdRun:
    """The first 3 embedded pages on a fresh cache, with the progress bar: the reports test and the cache test
    read this one run (the cache test then runs again on its cache)."""
    tmp = tmp_path_factory.mktemp("cold")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("DSOCR_CACHE_DIR", str(tmp / "cache"))
        calls = count_vendor_calls(mp)
        code = run_cli(main_vision, "--limit", 3, "--output-dir", tmp / "runs")
    return ColdRun(code, tmp / "runs", tmp / "cache", stdout.getvalue(), calls)


def test_vision_pass_exit_0_writes_three_reports(cold_vision_run):
    out = cold_vision_run.out
    assert cold_vision_run.code == 0
    run_dir = the_run_dir(out)
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# Verdict: PASS\n")
    doc = report(out)
    assert doc["verdict"] == "PASS" and doc["synthetic_pages"] is True
    assert doc["command"] == "run_verify_end2end_vision" and doc["config"]["stages"] == list(VISION_STAGES)
    assert [p["passed"] for p in doc["pages"]] == [True, True, True]
    assert all(p["trace"]["complete"] for p in doc["pages"])
    # CSV: 3 pages x (3 stages x 2 branches) x 7 metrics; the hf profile models every metric op by op (liveness
    # for peak_bytes included), so every row is gated and passes, with the vendor's figure next to the analytic one
    # (no '-' for a measured metric).
    rows = csv_rows(out)
    assert len(rows) == 3 * 6 * N_METRICS
    assert all(is_gated(r) for r in rows) and modeled("hf") >= GATED | {"peak_bytes", "io_bytes"}
    assert {r["passed"] for r in rows} == {"True"}
    assert all(r["vendor"] != "" for r in rows)
    assert squash(str(run_dir)) in squash(cold_vision_run.stdout)  # the summary names the reports


def test_second_run_is_served_from_the_cache_and_no_cache_measures_again(
    cold_vision_run, tmp_path, monkeypatch, vendor_calls
):
    assert cold_vision_run.code == 0
    cold = report(cold_vision_run.out)
    # Pages with one workload signature share a vendor run. acad-a4 1654x2339 (aspect 0.707) and book-a5
    # 874x1240 (0.705) both get the 2x3 crop grid, the 320x240 thumbnail none: 2 signatures for 3 pages.
    assert [p["workload"]["n_crops"] for p in cold["pages"]] == [6, 6, 0]
    assert len(cold_vision_run.vendor_calls) == 2
    assert [p["cache_hit"] for p in cold["pages"]] == [False, True, False]
    assert (cold_vision_run.cache / "traces").is_dir()

    monkeypatch.setenv("DSOCR_CACHE_DIR", str(cold_vision_run.cache))  # the cold run's cache, no fresh one
    args = ("--limit", 3, "--quiet")
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
    failing_all = [r for p in doc["pages"] for r in p["rows"] if r["passed"] is False]
    # One layer fewer is less elementwise work too (1/24 of CLIP's: 4.2 % > 2 %); its traffic and weights shrink by
    # about as much, which the 5 % byte tolerance may or may not absorb: only CLIP rows fail, FLOP rows always.
    failed = {(r["stage"], r["metric"]) for r in failing_all}
    assert {("clip", "tensor_flops"), ("clip", "elementwise_flops")} <= failed
    assert failed <= {
        ("clip", m) for m in ("tensor_flops", "elementwise_flops", "io_bytes", "activation_bytes", "weight_bytes")
    }
    failing = [r for r in failing_all if r["metric"] == "tensor_flops"]
    # The CLIP stack is 24 identical layers and nothing else CLIP-side is a tensor op (its inputs are SAM
    # features), so 23 analytic layers give analytic = 23/24 vendor: rel delta 1/24 = 4.17% > 1%.
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
    assert {r["gap_family"] for r in failing if r["metric"] == "tensor_flops"} == {"mm"}


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
    "tolerance-too-big": (main_vision, ["--tolerance", "sam=0.5"], "outside [0, 0.25]"),
    "tolerance-bad-stage": (main_vision, ["--tolerance", "vit=0.01"], "bad --tolerance 'vit=0.01'"),
    "tolerance-bad-value": (main_vision, ["--tolerance", "sam=lots"], "bad tolerance value"),
    "tolerance-default": (main_vision, ["--tolerance-default", "0.3"], "outside [0, 0.25]"),
    "override-bad-key": (main_vision, ["--override", "vision.clip.no_such_key=3"], "no_such_key"),
    "override-bad-syntax": (main_vision, ["--override", "vision.clip.num_layers"], "analytic config override"),
    # a typed override that only fails when the formulas are evaluated: caught by evaluating once up front
    "override-fails-late": (
        main_vision,
        ["--override", "vision.sam.patch_size=abc"],
        "analytic config override failed",
    ),
    "override-bad-positions": (
        main_vision,
        ["--override", "decoder.max_position_embeddings=0"],
        "max_position_embeddings=0 must be a positive integer",
    ),
    # Positions (decoder.max_position_embeddings = 8192). The longest gundam page: global 1024 view
    # (16 + 1) * 16 + 1 = 273 tokens, plus the 1x9 crop grid (10 * 1 + 1) * (10 * 9) = 990: 1263 image tokens.
    # 1 + 1263 + 12 prompt + 6917 decode = 8193 > 8192.
    "decode-past-positions": (main_end2end, ["--decode-tokens", "6917"], "= 8193 positions, past the decoder's 8192"),
    "decode-far-past-positions": (main_end2end, ["--decode-tokens", "100000"], "past the decoder's 8192"),
    "prompt-past-positions": (main_vision, ["--prompt-tokens", str(10**12)], "past the decoder's 8192"),
    # base mode with image_size 64000: nq = 64000 / 64 = 1000, (1000 + 1) * 1000 + 1 = 1,001,001 image tokens
    "image-size-past-positions": (main_vision, ["--mode", "base", "--image-size", "64000"], "1001001 image tokens"),
    "base-size-not-a-multiple": (main_vision, ["--base-size", "1000"], "positive multiple of 64"),
    "image-size-zero": (main_vision, ["--mode", "base", "--image-size", "0"], "positive multiple of 64"),
    "tolerance-nan": (main_vision, ["--tolerance-default", "nan"], "outside [0, 0.25]"),
    "tolerance-inf": (main_vision, ["--tolerance", "sam=inf"], "outside [0, 0.25]"),
    "limit-huge": (main_vision, ["--limit", str(10**8)], "above 10,000,000 pages"),
    "sample-huge": (main_vision, ["--sample", str(10**8)], "above 10,000,000 pages"),
    "seed-negative": (main_vision, ["--sample", "2", "--seed", "-1"], "--seed must be in 0..4294967295"),
    "seed-huge": (main_vision, ["--sample", "2", "--seed", str(2**40)], "--seed must be in 0..4294967295"),
    # options that would be silently ignored
    "vendor-dir-is-a-file": (
        main_vision,
        ["--backend", "remote-code", "--vendor-dir", str(TINY / "config.json"), "--trust-remote-code"],
        "is a file, not a folder",
    ),
    "vendor-dir-with-hf": (
        main_vision,
        ["--vendor-dir", str(TINY)],
        "--vendor-dir applies only to --backend remote-code",
    ),
    "trust-with-hf": (
        main_vision,
        ["--trust-remote-code"],
        "--trust-remote-code applies only to --backend remote-code",
    ),
    "data-source-without-omnidocbench": (main_vision, ["--data-source", "book"], "applies only to --omnidocbench"),
    "images-dir-with-images": (
        main_vision,
        ["--images", "{tmp}", "--images-dir", "{tmp}"],
        "--images-dir applies only to --omnidocbench",
    ),
    "seed-without-sample": (main_vision, ["--seed", "3"], "--seed applies only to --sample"),
    "cache-dir-with-no-cache": (main_vision, ["--no-cache", "--cache-dir", "{tmp}/c"], "no effect with --no-cache"),
    "sdpa-with-remote-code": (
        main_end2end,
        ["--backend", "remote-code", "--vendor-dir", str(TINY), "--trust-remote-code", "--attn-impl", "sdpa"],
        "eager attention only",
    ),
    "lm-head-last-with-remote-code": (
        main_end2end,
        ["--backend", "remote-code", "--vendor-dir", str(TINY), "--trust-remote-code", "--lm-head", "last"],
        "use --lm-head all",
    ),
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
    anchor = "        embedded = self.embeddings(x, patch_embeds)\n"  # the CLIP-like forward
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
        # every leaf: tensor FLOPs and KV-cache bytes exact, elementwise FLOPs and weight bytes within tolerance
        assert {r["metric"] for r in gated} >= GATED and all(is_gated(r, "official") for r in gated)
        assert len(gated) == sum(is_gated(r, "official") for r in page["rows"])
        assert all(r["rel_delta"] == 0 for r in gated if r["metric"] in ("tensor_flops", "kv_cache_bytes"))
        assert all(r["passed"] for r in gated)
        # the official profile models every copy and cast of the official code: io and activation bytes gated on
        # every stage the page runs, within half a percent of the measured run
        for metric in ("io_bytes", "activation_bytes"):
            rows = [r for r in gated if r["metric"] == metric]
            assert {r["stage"] for r in rows} == set(STAGES)
            assert all(abs(r["rel_delta"]) < 0.005 for r in rows), [(r["stage"], r["rel_delta"]) for r in rows]
        # and its liveness: peak_bytes gated on every stage (the look-alike's peaks agree to the byte)
        rows = [r for r in gated if r["metric"] == "peak_bytes"]
        assert {r["stage"] for r in rows} == set(STAGES)
        assert all(abs(r["rel_delta"]) < 0.005 for r in rows), [(r["stage"], r["rel_delta"]) for r in rows]
        assert len(page["trace"]["stages"]["decode"]["steps"]) == 3
        assert page["workload"]["lm_head_scope"] == "all"  # the official forward projects every position
    env = doc["environment"]
    assert Path(env["vendor_dir"]).resolve() == TINY.resolve()
    for name in ("deepencoder.py", "modeling_deepseekocr.py", "modeling_deepseekv2.py", "config.json"):
        assert env["code_hashes"][name] == hashlib.sha256((TINY / name).read_bytes()).hexdigest()
    md = (the_run_dir(out) / "report.md").read_text()
    assert md.startswith("# Verdict: PASS\n") and env["code_hashes"]["deepencoder.py"] in md


TINY2 = tiny_snapshot("deepseek-ocr-2")
# The DeepSeek-OCR 2 look-alike's dims (deepencoderv2.py fixes the vision widths, config.json the decoder's)
TINY2_OVERRIDES = [
    *(ov for ov in TINY_OVERRIDES if ov.startswith(("vision.sam.", "decoder.", "projector.n_embed"))),
    "vision.sam.downsample_channels=[32,32]",  # net_3 -> the encoder width (listed last: overrides the above)
    "vision.qwen2_encoder.hidden_size=32",
    "vision.qwen2_encoder.num_layers=2",
    "vision.qwen2_encoder.num_heads=4",
    "vision.qwen2_encoder.num_kv_heads=2",
    "vision.qwen2_encoder.intermediate_size=64",
    "projector.input_dim=32",
]
STAGES2 = ("sam", "qwen2_encoder", "projector", "prefill", "decode")


def test_remote_code_end_to_end_tiny_ocr2_snapshot_exit_0(tmp_path):
    """DeepSeek-OCR 2's official structure (the look-alike) against the official profile: tensor FLOPs exact on
    every stage; every other modeled metric gated on every stage, the Qwen2 encoder's included."""
    out = tmp_path / "runs"
    argv = ["--model", "deepseek-ocr-2", "--backend", "remote-code", "--vendor-dir", TINY2, "--trust-remote-code"]
    argv += ["--limit", 2, "--decode-tokens", 2, "--dtype", "float32", "--quiet", "--cache-dir", tmp_path / "traces"]
    for ov in TINY2_OVERRIDES:
        argv += ["--override", ov]
    assert run_cli(main_end2end, *argv, "--output-dir", out) == 0
    doc = report(out)
    assert doc["verdict"] == "PASS" and doc["config"]["stages"] == list(STAGES2)
    for page in doc["pages"]:
        gated = [r for r in page["rows"] if r["passed"] is not None]
        assert all(r["passed"] for r in gated)
        flops = [r for r in gated if r["metric"] == "tensor_flops"]
        assert {r["stage"] for r in flops} == set(STAGES2) and all(r["rel_delta"] == 0 for r in flops)
        for stage in STAGES2:  # every modeled metric gated there
            assert {r["metric"] for r in gated if r["stage"] == stage} >= GATED | {"peak_bytes", "io_bytes"}
        assert page["trace"]["environment"]["family"] == "deepseek-ocr-2"
    env = doc["environment"]
    for name in ("deepencoderv2.py", "modeling_deepseekocr2.py", "modeling_deepseekv2.py", "config.json"):
        assert env["code_hashes"][name] == hashlib.sha256((TINY2 / name).read_bytes()).hexdigest()


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


def test_two_runs_in_the_same_second_both_write_reports(cache_dir, small_page, tmp_path, monkeypatch):
    fixed = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return fixed

    monkeypatch.setattr(verify.runner, "datetime", FrozenClock)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 0
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 0
    assert len(list(out.iterdir())) == 2


def test_unusable_output_dir_is_exit_2_before_any_vendor_run(cache_dir, tmp_path, vendor_calls, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run_cli(main_vision, "--limit", 1, "--quiet", "--output-dir", blocker / "runs") == 2
    assert vendor_calls == []
    assert "--output-dir" in capsys.readouterr().err


# ---- hostile inputs and faults ------------------------------------------------------------------------


def _odb(tmp_path: Path, image_paths: list[str]) -> Path:
    """An OmniDocBench root with images/ok.png (500x400: gundam, both sides <= 640, global view only)."""
    root = tmp_path / "odb"
    (root / "images").mkdir(parents=True)
    write_png(root / "images" / "ok.png", 500, 400)
    entries = [{"page_info": {"image_path": p, "width": 500, "height": 400}} for p in image_paths]
    (root / "OmniDocBench.json").write_text(json.dumps(entries))
    return root


def test_image_path_outside_the_root_is_a_bad_page_and_the_run_goes_on(cache_dir, tmp_path):
    write_png(tmp_path / "secret.png", 500, 400)  # a readable image outside the root
    root = _odb(tmp_path, ["ok.png", "../../secret.png", str(tmp_path / "secret.png")])
    out = tmp_path / "runs"
    # the annotation file itself may be named instead of the root
    assert run_cli(main_vision, "--omnidocbench", root / "OmniDocBench.json", "--quiet", "--output-dir", out) == 2
    ok, dotdot, absolute = report(out)["pages"]
    assert ok["passed"] is True
    for page in (dotdot, absolute):
        assert page["error_kind"] == "input" and "points outside the OmniDocBench image folder" in page["error"]
        assert page["trace"] is None and page["page"]["image_path"] is None  # never opened


def test_every_image_path_outside_the_root_is_exit_2_without_report(cache_dir, tmp_path, capsys):
    root = _odb(tmp_path, ["../../etc/passwd", "/etc/passwd"])
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--omnidocbench", root, "--quiet", "--output-dir", out) == 2
    assert "points outside" in capsys.readouterr().err and not out.exists()


def test_every_page_bad_never_builds_the_model(cache_dir, tmp_path, monkeypatch, capsys):
    def no_model(cfg):
        pytest.fail("the vendor measurer was created although no page can be verified")

    monkeypatch.setattr("verify.vendor_measure.VendorMeasurer.create", no_model)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run_cli(main_vision, "--images", bad, "--quiet", "--output-dir", tmp_path / "runs") == 2
    assert "bad.png" in capsys.readouterr().err


def test_truncated_png_is_a_bad_page(cache_dir, tmp_path):
    good = write_png(tmp_path / "good.png", 500, 400)
    cut = tmp_path / "cut.png"
    Image.effect_noise((500, 400), 50).convert("RGB").save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", good, cut, "--quiet", "--output-dir", out) == 2
    pages = {p["page"]["page_id"]: p for p in report(out)["pages"]}
    assert pages["good"]["passed"] is True
    assert pages["cut"]["error_kind"] == "input" and "corrupt or truncated" in pages["cut"]["error"]


def test_undecodable_file_names_keep_every_report(cache_dir, tmp_path, capsys):
    root = _odb(tmp_path, [])
    latin1 = os.fsdecode(b"scan-\xff.png")  # bytes that are not UTF-8: a legal Linux file name
    write_png(root / "images" / latin1, 500, 400)
    (root / "OmniDocBench.json").write_text(
        json.dumps([{"page_info": {"image_path": p, "width": 500, "height": 400}} for p in (latin1, "\ud800.png")])
    )
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--omnidocbench", root, "--output-dir", out) == 2  # with the progress bar
    doc = report(out)
    assert [p["page"]["page_id"] for p in doc["pages"]] == ["scan-\\xff", "\\ud800"]
    assert doc["pages"][0]["passed"] is True
    assert "not a valid file name" in doc["pages"][1]["error"]
    assert "scan-\\xff" in (the_run_dir(out) / "report.md").read_text(encoding="utf-8")
    assert {r["page_id"] for r in csv_rows(out)} == {"scan-\\xff"}
    assert "\\ud800" in capsys.readouterr().out


def test_same_file_twice_is_one_page(cache_dir, tmp_path):
    good = write_png(tmp_path / "good.png", 500, 400)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", good, tmp_path, good, "--quiet", "--output-dir", out) == 0
    assert [p["page"]["page_id"] for p in report(out)["pages"]] == ["good"]


# cache faults: a cache problem, one warning line, the run goes on; never exit 3, never a lost page


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: trace cache")]


def test_cache_dir_that_is_a_file_runs_without_cache(cache_dir, small_page, tmp_path, vendor_calls, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--cache-dir", blocker, "--output-dir", out) == 0
    (warning,) = _warnings(capsys.readouterr().err)
    assert "is a file, not a folder" in warning and "not a vendor failure" in warning
    doc = report(out)
    assert doc["pages"][0]["passed"] and len(vendor_calls) == 1
    assert (
        doc["environment"]["cache"].startswith("disabled: ")
        and "is a file, not a folder" in doc["environment"]["cache"]
    )
    assert blocker.read_text() == ""


def test_read_only_cache_runs_and_says_so(cache_dir, small_page, tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):  # a read-only folder (chmod does not stop root, so the write is refused here)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("verify.cache.tempfile.mkstemp", read_only)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 0
    (warning,) = _warnings(capsys.readouterr().err)
    assert "Read-only file system" in warning
    doc = report(out)
    assert doc["pages"][0]["passed"] and doc["environment"]["cache"].startswith("read-only: ")


def test_disk_full_mid_run_keeps_every_page_and_warns_once(cache_dir, tmp_path, vendor_calls, capsys, monkeypatch):
    def full(fd, text):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("verify.cache._write_fd", full)
    out = tmp_path / "runs"
    # 3 pages, 2 workload signatures (see the cache test above): two writes fail, one warning
    assert run_cli(main_vision, "--limit", 3, "--quiet", "--output-dir", out) == 0
    assert len(_warnings(capsys.readouterr().err)) == 1
    doc = report(out)
    assert [p["passed"] for p in doc["pages"]] == [True, True, True] and len(vendor_calls) == 2
    assert doc["environment"]["cache"].startswith("degraded: ") and "No space left" in doc["environment"]["cache"]
    assert not [p for p in (cache_dir / "traces").rglob("*") if p.is_file()]  # no temporary left behind


def test_cache_entry_that_is_not_a_valid_trace_is_a_miss_and_replaced(cache_dir, small_page, tmp_path, vendor_calls):
    from verify.vendor_measure import valid_cache_trace

    args = ("--images", small_page, "--quiet")
    assert run_cli(main_vision, *args, "--output-dir", tmp_path / "a") == 0
    (entry,) = (cache_dir / "traces").rglob("*.json")
    doc = json.loads(entry.read_text())
    doc["trace"] = {"complete": True}  # the entry layout is right, the trace is not
    entry.write_text(json.dumps(doc))
    vendor_calls.clear()
    assert run_cli(main_vision, *args, "--output-dir", tmp_path / "b") == 0
    assert len(vendor_calls) == 1 and report(tmp_path / "b")["pages"][0]["cache_hit"] is False
    valid_cache_trace(json.loads(entry.read_text())["trace"])  # replaced by a valid one


def test_report_folder_race_takes_the_next_name(cache_dir, small_page, tmp_path, monkeypatch):
    import reports.writer

    real_rename = os.rename
    raced: list[str] = []

    def other_writer_first(src, dst):
        if not raced:  # another run with the same id renames its folder into place just before us
            raced.append(str(dst))
            os.makedirs(dst)
            (Path(dst) / "report.md").write_text("the other run")
        real_rename(src, dst)

    monkeypatch.setattr(reports.writer.os, "rename", other_writer_first)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 0
    theirs, ours = sorted(out.iterdir())
    assert ours.name == f"{theirs.name}-2" and {p.name for p in ours.iterdir()} == REPORT_FILES
    assert json.loads((ours / "report.json").read_text())["run_id"] == ours.name


def test_reports_that_cannot_be_written_still_show_the_results(cache_dir, small_page, tmp_path, monkeypatch, capsys):
    def disk_full(run, path, *_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("reports.writer.write_csv", disk_full)
    out = tmp_path / "runs"
    assert run_cli(main_vision, "--images", small_page, "--quiet", "--output-dir", out) == 2
    captured = capsys.readouterr()
    assert "PASS: all 1 pages within tolerance" in captured.out  # the finished work is not lost
    assert "cannot write the reports" in captured.err and "No space left" in captured.err
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_tilde_in_a_path_option_is_the_home_folder(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_png(tmp_path / "good.png", 500, 400)
    assert run_cli(main_vision, "--images", "~/good.png", "--quiet", "--output-dir", "~/runs") == 0
    assert [p["page"]["page_id"] for p in report(tmp_path / "runs")["pages"]] == ["good"]
