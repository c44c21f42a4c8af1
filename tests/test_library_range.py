"""The supported library range: release-keyed profile variants, the verdict on an unverified release, the
constraints file per release and the declared requirement.

Expected figures are derived by hand from the code each release runs (shown next to them); no number is copied
from a measurement. The gate itself runs per release in `.ci/run` (the oldest and the newest supported).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from analytic.layers.decoder import MoeMlp
from analytic.model import build_cost_model
from core.profiles import ImplProfile, ProfileError, at_release
from core.releases import ReleaseError, library_report, minor, release_key, release_table
from core.workload import VisionWorkload, WorkloadError
from verify import depset

REPO = Path(__file__).resolve().parents[1]


# ---- versions and variants ---------------------------------------------------------------------------------------


def test_release_numbers_ignore_local_builds_and_pre_release_tags():
    assert release_key("5.24.0") == (5, 24, 0)
    assert release_key("2.13.0+cu130") == (2, 13, 0)
    assert release_key("5.26.0.dev0") == (5, 26, 0)
    assert minor("5.24.1") == (5, 24) and minor("5") == (5, 0)
    with pytest.raises(ReleaseError, match="no release number"):
        release_key("latest")


def test_hf_variants_follow_the_release_table():
    table = release_table("hf")
    assert table.library == "transformers" and table.base == "5.23.0"
    assert table.variant("5.23.0") == "hf@5.23" and table.overrides("5.23.0") == {}
    for later in ("5.24.0", "5.24.1", "5.26.0"):  # a change stays in force in every later release
        assert table.variant(later) == "hf@5.24"
        assert table.overrides(later) == {"router_weight": "float32"}
    assert table.variant(None) == table.variant(table.newest)  # unknown: the newest verified (what setup installs)


def test_every_change_names_fields_the_profile_has_and_is_documented():
    names = {f for f in ImplProfile.__dataclass_fields__}
    for impl in ("hf", "official"):
        table = release_table(impl)
        for change in table.changes:
            assert set(change.set) <= names, change.set
            assert change.code and change.ops and change.effect


def test_at_release_sets_the_field_and_names_the_variant():
    model = build_cost_model()
    base = model.profiles["hf"]
    assert base.router_weight == "model_dtype" and base.variant == ""
    new = at_release(base, "5.24.0")
    assert new.router_weight == "float32" and new.variant == "hf@5.24" and new.key == "hf@5.24"
    assert at_release(base, "5.23.0").router_weight == "model_dtype"
    assert model.profile("hf", "5.24.0") is model.profile("hf", "5.24.0")  # resolved once
    assert at_release(model.profiles["official"], "4.46.3").variant == "official@4.46"


def test_a_release_table_setting_an_unknown_field_is_refused(monkeypatch):
    table = release_table("hf")
    monkeypatch.setattr(type(table), "overrides", lambda self, version: {"router_weigth": "float32"})
    with pytest.raises(ProfileError, match="unknown profile fields router_weigth"):
        at_release(build_cost_model().profiles["hf"], "5.24.0")


def test_a_version_that_is_not_a_release_number_is_a_workload_error():
    with pytest.raises(WorkloadError, match="not a release number"):
        VisionWorkload.from_page(1000, 1000, "base", impl="hf", impl_version="../etc")


# ---- the 5.24 change by hand -------------------------------------------------------------------------------------


def _router(router_weight: str, db: int):
    from analytic.costs import Cost

    profile = ImplProfile(
        name="hf", rope="once_elementwise", clip_qkv="separate", experts="grouped_mm", vision_attention="sdpa",
        decoder_attn_impls=("eager",), supports_mla=False, lm_head_default="last", router_weight=router_weight,
    )  # fmt: skip
    c = Cost()
    MoeMlp(hidden=8, n_experts=4, top_k=2, expert_intermediate=6, n_shared=0).evaluate(c, 3, profile, db, None)
    return c


def test_router_weight_kept_in_float32_by_hand():
    """E=4 experts, h=8: transformers 5.23 casts the bf16 weight (reads E*h*2 = 64 B, writes its float32 copy E*h*4
    = 128 B, which the mm reads: 128 B); 5.24 keeps the weight float32 and the mm reads it (E*h*4 = 128 B)."""
    old, new = _router("model_dtype", 2), _router("float32", 2)
    e_h = 4 * 8
    assert new.weight_bytes - old.weight_bytes == e_h * (4 - 2)  # +64: the weight at 4 bytes instead of 2
    assert old.activation_bytes - new.activation_bytes == e_h * 4  # -128: the copy is never written
    assert old.io_bytes - new.io_bytes == e_h * 4 + e_h * 4 - e_h * (4 - 2)  # -128 write -128 read +64 weight
    assert new.tensor_flops == old.tensor_flops and new.elementwise_flops == old.elementwise_flops
    # in float32 there is no cast in either release: nothing differs
    f_old, f_new = _router("model_dtype", 4), _router("float32", 4)
    assert (f_old.io_bytes, f_old.weight_bytes, f_old.activation_bytes, f_old.peak_bytes) == (
        f_new.io_bytes, f_new.weight_bytes, f_new.activation_bytes, f_new.peak_bytes,
    )  # fmt: skip


def test_resident_weights_hold_the_float32_routers():
    """DeepSeek-OCR: 12 layers, the first dense, 11 MoE routers of 64 x 1280 kept at 4 bytes instead of 2."""
    model = build_cost_model()
    wl = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf", dtype="bfloat16", decode_tokens=1)
    old = model.estimate(VisionWorkload.from_dict({**wl.to_dict(), "impl_version": "5.23.0"})).memory
    new = model.estimate(VisionWorkload.from_dict({**wl.to_dict(), "impl_version": "5.24.0"})).memory
    assert new["weight_resident_bytes"] - old["weight_resident_bytes"] == 11 * 64 * 1280 * 2  # 1,802,240


def test_the_variant_is_in_the_estimate():
    model = build_cost_model()
    wl = VisionWorkload.from_page(1000, 1400, "base", impl="hf", impl_version="5.24.0")
    assert model.estimate(wl).model["profile"]["variant"] == "hf@5.24"


# ---- outside the range: the verdict says so ----------------------------------------------------------------------


def test_library_report_names_a_release_outside_the_range():
    rep = library_report("hf", {"transformers": "5.26.0", "torch": "2.13.0+cpu"})
    assert rep["variant"] == "hf@5.24" and not rep["verified"]
    assert rep["notes"] == ["transformers 5.26.0 is newer than the supported range 5.23-5.25"]
    assert "scripts/drift.sh" in rep["advice"]
    old = library_report("hf", {"transformers": "5.22.2", "torch": "2.11.0+cu128"})
    assert old["notes"] == [
        "transformers 5.22.2 is older than the supported range 5.23-5.25",
        "torch 2.11.0+cu128 is older than the supported range 2.13",
    ]
    ok = library_report("hf", {"transformers": "5.24.0", "torch": "2.13.0+cu130"})  # a CUDA build of 2.13
    assert ok["verified"] and ok["notes"] == [] and ok["advice"] is None
    assert library_report("official", {"transformers": "4.46.3", "torch": "2.13.0"})["verified"]


def _run(environment: dict, passed: bool = True):
    from reports.model import ComparisonRow, PageResult, PageSpec, RunResult

    row = ComparisonRow("p1", "sam", "global", "tensor_flops", 10.0, 10.0 if passed else 12.0, 0.0, 0.0, 0.01, passed)
    page = PageResult(page=PageSpec("p1", 100, 100, "files"), rows=[row])
    return RunResult("r1", "run_verify_end2end_vision", {"model": "deepseek-ocr", "backend": "hf"}, environment,
                     [page], "2026-12-03T00:00:00", "2026-12-03T00:00:01", 1.0)  # fmt: skip


@pytest.mark.parametrize("passed", [True, False])
def test_verdict_line_console_markdown_and_json_name_an_unverified_library(passed, capsys):
    from rich.console import Console

    from reports.console import print_summary
    from reports.document import run_document
    from reports.markdown import render_markdown
    from reports.summary import verdict_line

    run = _run({"library_range": library_report("hf", {"transformers": "5.26.0", "torch": "2.13.0"})}, passed)
    line = verdict_line(run)
    head = "UNVERIFIED LIBRARY: transformers 5.26.0 is newer than the supported range 5.23-5.25"
    assert line.startswith(head) and "run scripts/drift.sh" in line
    assert ("PASS anyway: all 1 pages within tolerance" in line) if passed else ("FAIL on it: 1 of 1 pages" in line)
    assert run.verdict == ("PASS" if passed else "FAIL")  # the exit code stays the verdict's (docs/running.md)
    doc = run_document(run)
    assert doc["verdict_line"] == line and doc["library_verified"] is False
    assert line in render_markdown(run)
    print_summary(run, Console(width=400))
    out = capsys.readouterr().out
    assert head in out and "transformers 5.26.0, profile hf@5.24" in out


def test_a_verified_library_keeps_the_plain_verdict():
    from reports.summary import verdict_line

    run = _run({"library_range": library_report("hf", {"transformers": "5.23.0", "torch": "2.13.0"})})
    assert verdict_line(run).startswith("PASS: all 1 pages")
    assert verdict_line(_run({})).startswith("PASS:")  # a run recorded before the range existed


def test_a_run_on_an_unverified_transformers_measures_compares_and_says_so(tmp_path, monkeypatch, capsys):
    """The installed transformers faked as 5.26.0 (the code run is the installed one): the pages are measured
    and compared as usual, with the newest variant, and every report names the release."""
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(tmp_path / "cache"))
    base = importlib.import_module("vendor_shim.backends.base")
    real = base.library_versions
    monkeypatch.setattr(base, "library_versions", lambda: {**real(), "transformers": "5.26.0"})
    from verify.cli import main_vision

    out = tmp_path / "runs"
    assert main_vision(["--limit", "1", "--quiet", "--output-dir", str(out)]) == 0
    doc = json.loads(next(out.glob("*/report.json")).read_text())
    assert doc["verdict"] == "PASS" and doc["library_verified"] is False
    assert doc["verdict_line"].startswith("UNVERIFIED LIBRARY: transformers 5.26.0 is newer than the supported range")
    assert doc["pages"][0]["workload"]["impl_version"] == "5.26.0"
    assert doc["pages"][0]["analytic"]["model"]["profile"]["variant"] == "hf@5.24"
    assert "UNVERIFIED LIBRARY" in capsys.readouterr().out


# ---- the range as installed: constraints per release, pyproject, setup.sh ----------------------------------------


def test_every_verified_transformers_release_has_a_constraints_file_and_the_newest_is_the_tested_set():
    """The tested set (the default install) pins the newest verified release that installs as published; a newer
    verified one may only be a release file that installs transformers on its own (5.25.0: `kernels`)."""
    verified = release_table("hf").verified["transformers"]
    tested = depset.read_pins()["transformers"]
    assert tested in verified
    releases = depset.release_files()
    for v in verified:
        if release_key(v) > release_key(tested):
            name = f"transformers-{minor(v)[0]}.{minor(v)[1]}"
            assert "transformers" in depset.without_dependencies(releases[name]), (
                f"constraints/tested.txt must pin the newest verified release that installs as published, not {tested}"
            )
    for v in verified:
        if v != tested:
            name = f"transformers-{minor(v)[0]}.{minor(v)[1]}"
            assert name in releases, f"constraints/{name}.txt missing for verified release {v}"
            assert depset.merged_pins(releases[name])["transformers"] == v
    for name, path in releases.items():  # no overlay for a release nobody verified
        assert depset.merged_pins(path)["transformers"] in verified, name


def test_merged_pins_replace_only_what_the_release_names(tmp_path):
    overlay = tmp_path / "transformers-9.9.txt"
    overlay.write_text("# a release\ntransformers==9.9.0\n")
    base, merged = depset.read_pins(), depset.merged_pins(overlay)
    assert merged["transformers"] == "9.9.0"
    assert {k: v for k, v in merged.items() if k != "transformers"} == {
        k: v for k, v in base.items() if k != "transformers"
    }
    out = subprocess.run(
        [sys.executable, "-m", "verify.depset", "merge", str(overlay)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "transformers==9.9.0\n" in out.stdout and out.stdout.count("==") == len(base)


def test_the_declared_requirement_starts_at_the_oldest_verified_release():
    vendor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vendor"]
    spec = next(r for r in vendor if r.startswith("transformers"))
    oldest = min(release_table("hf").verified["transformers"], key=release_key)
    assert spec.startswith(f"transformers>={oldest.rsplit('.', 1)[0]}"), spec


def test_setup_refuses_an_unknown_release_before_creating_anything(tmp_path):
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "DSOCR_DEPS": "transformers-4.0", "DSOCR_VENV": str(venv)},
    )  # fmt: skip
    assert out.returncode == 2 and "transformers-5.23" in out.stderr
    assert not venv.exists()


def test_a_release_installed_without_its_dependencies_resolves_with_the_tested_pin_first(tmp_path):
    """pip resolves the project with the tested transformers, then installs the release's own with --no-deps."""
    overlay = tmp_path / "transformers-9.9.txt"
    overlay.write_text("# install-without-dependencies: transformers\ntransformers==9.9.0\n")
    tested = depset.read_pins()["transformers"]
    assert depset.without_dependencies(overlay) == ("transformers",)
    assert depset.resolvable_pins(overlay)["transformers"] == tested
    assert depset.merged_pins(overlay)["transformers"] == "9.9.0"  # what the install holds in the end
    run = {"cwd": REPO, "capture_output": True, "text": True, "check": True}
    alone = subprocess.run([sys.executable, "-m", "verify.depset", "alone", str(overlay)], **run).stdout
    assert alone == "transformers==9.9.0\n"
    merge = subprocess.run([sys.executable, "-m", "verify.depset", "merge", str(overlay)], **run).stdout
    assert f"transformers=={tested}\n" in merge
    bad = tmp_path / "transformers-9.8.txt"
    bad.write_text("# install-without-dependencies: kernels\ntransformers==9.8.0\n")
    with pytest.raises(depset.DepsetError, match="names kernels, which it does not pin"):
        depset.without_dependencies(bad)


def test_ci_gates_the_oldest_and_newest_verified_release_beside_the_tested_set(tmp_path):
    (tmp_path / "tested.txt").write_text("transformers==5.24.0\nrich==15.0.0\n")
    (tmp_path / "transformers-5.23.txt").write_text("transformers==5.23.0\n")
    (tmp_path / "transformers-5.25.txt").write_text("transformers==5.25.0\n")
    assert depset.range_ends(("5.23.0", "5.24.0", "5.25.0"), tmp_path) == ["transformers-5.23", "transformers-5.25"]
    assert depset.range_ends(("5.23.0", "5.24.0"), tmp_path) == ["transformers-5.23"]  # the newest is the tested set
    with pytest.raises(depset.DepsetError, match=r"5.26.0 has no constraints/transformers-5.26.txt"):
        depset.range_ends(("5.23.0", "5.26.0"), tmp_path)
