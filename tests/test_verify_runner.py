"""verify.runner with a fake cost model and a fake vendor: the run loop, the page checks, the exit code.

No torch, no model: every number below is typed by hand in the fakes, so each expected verdict is
plain arithmetic on those numbers (shown in the comments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from core.metrics import METRICS
from core.schema import STAGES, VISION_STAGES, leaf_paths
from core.workload import VisionWorkload
from reports.model import ComparisonRow, PageResult, PageSpec, RunResult
from vendor_shim.backends.base import OutOfProcessBackend
from verify.compare import Tolerances
from verify.runner import VendorFailure, Verifier, VerifyConfig, exit_code, run_pages

FLOPS = 1000  # every gated leaf on the analytic side; vendor sides below differ from it on purpose


def _stages(stages: tuple[str, ...], tensor_flops: int = FLOPS, **override: int) -> dict[str, Any]:
    """A stages document with every leaf at `tensor_flops`, and `override` as {"stage__part": value}."""
    out: dict[str, Any] = {}
    for stage, part in leaf_paths(stages):
        leaf = {m: 0 for m in METRICS}
        leaf["tensor_flops"] = override.get(f"{stage}__{part}", tensor_flops)
        out.setdefault(stage, {})[part] = leaf
    return out


@dataclass
class FakeEstimate:
    stages: dict[str, Any]
    families: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "families": self.families}


@dataclass
class FakeCostModel:
    """estimate(workload) -> FakeEstimate; raises for pages whose width is in `broken_widths`."""

    stages: tuple[str, ...]
    broken_widths: set[int] = field(default_factory=set)
    calls: int = 0

    def estimate(self, workload: VisionWorkload) -> FakeEstimate:
        self.calls += 1
        if workload.width in self.broken_widths:
            raise ValueError("formula blew up")
        return FakeEstimate(_stages(self.stages), {"sam": {"global": {"mm": FLOPS}}})


@dataclass
class FakeVendor:
    """(workload, page) -> (trace, cache_hit); per-page behaviour keyed by page id."""

    stages: tuple[str, ...]
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)  # page id -> trace override
    raises: dict[str, BaseException] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    prefetched: list[list[VisionWorkload]] = field(default_factory=list)

    def __call__(self, workload: VisionWorkload, page: PageSpec) -> tuple[dict[str, Any], bool]:
        self.calls.append(page.page_id)
        if page.page_id in self.raises:
            raise self.raises[page.page_id]
        trace = {
            "complete": True,
            "stages": _stages(self.stages),
            "received": {k: getattr(workload, k) for k in ("w_crop", "h_crop", "n_crops", "n_image_tokens")},
            "coverage": {"uncounted_ops": []},
            "op_breakdown": {"sam": {"global": {"aten.addmm.default": {"flops": FLOPS, "family": "mm"}}}},
        }
        trace.update(self.traces.get(page.page_id, {}))
        return trace, False

    def prefetch(self, workloads: list[VisionWorkload], notify=None) -> None:
        self.prefetched.append(list(workloads))


def _page(page_id: str, width: int = 800, height: int = 1000, error: str | None = None) -> PageSpec:
    # No image_path: checked_page trusts the geometry, as for an embedded page not rendered yet.
    return PageSpec(page_id, width, height, source="embedded", synthetic=True, error=error)


def _verifier(
    vision_only: bool = True, vendor: FakeVendor | None = None, model: FakeCostModel | None = None
) -> Verifier:
    cfg = VerifyConfig(command="test", vision_only=vision_only, decode_tokens=0 if vision_only else 2, device="meta")
    vendor = vendor or FakeVendor(cfg.stages)
    return Verifier(cfg=cfg, measure=vendor, cost_model=model or FakeCostModel(cfg.stages))


def _run(verifier: Verifier, pages: list[PageSpec]) -> RunResult:
    seen: list[str] = []
    run = run_pages(verifier, pages, {"backend": "fake"}, on_page=lambda r: seen.append(r.page.page_id))
    assert seen == [p.page_id for p in pages]  # on_page once per page, in order
    return run


# ---- the run loop ------------------------------------------------------------------------------------


def test_all_pages_pass_with_equal_counts():
    run = _run(_verifier(), [_page("a"), _page("b", 1654, 2339)])
    assert [p.passed for p in run.pages] == [True, True]
    # vision only: 3 stages x 2 branches = 6 gated leaves a page, every other metric reported only
    gated = [r for r in run.pages[0].rows if r.passed is not None]
    assert len(gated) == 6 and len(run.pages[0].rows) == 6 * len(METRICS)
    assert {r.rel_delta for r in gated} == {0.0}
    assert run.verdict == "PASS" and exit_code(run) == 0


def test_unexpected_exception_on_one_page_keeps_the_others():
    vendor = FakeVendor(VISION_STAGES, raises={"b": RuntimeError("segfault-ish")})
    run = _run(_verifier(vendor=vendor), [_page("a"), _page("b"), _page("c")])
    by_id = {p.page.page_id: p for p in run.pages}
    assert [p.page.page_id for p in run.pages] == ["a", "b", "c"]
    assert by_id["a"].passed and by_id["c"].passed
    assert by_id["a"].rows and by_id["c"].rows
    b = by_id["b"]
    assert b.error_kind == "vendor" and b.error == "RuntimeError: segfault-ish"
    assert "Traceback" in b.trace["traceback"] and "segfault-ish" in b.trace["traceback"]
    assert vendor.calls == ["a", "b", "c"]
    assert exit_code(run) == 3


def test_vendor_failure_is_a_vendor_error_without_traceback():
    vendor = FakeVendor(VISION_STAGES, raises={"a": VendorFailure("VendorRunError: the model OOMed")})
    run = _run(_verifier(vendor=vendor), [_page("a"), _page("b")])
    a = run.pages[0]
    assert a.error_kind == "vendor" and a.error == "VendorRunError: the model OOMed" and a.trace is None
    assert run.pages[1].passed
    assert exit_code(run) == 3


def test_analytic_failure_fails_the_page_with_exit_1_and_never_calls_the_vendor():
    vendor = FakeVendor(VISION_STAGES)
    model = FakeCostModel(VISION_STAGES, broken_widths={801})
    run = _run(_verifier(vendor=vendor, model=model), [_page("a"), _page("b", 801)])
    assert run.pages[0].passed
    assert run.pages[1].error_kind == "analytic" and "formula blew up" in run.pages[1].error
    assert vendor.calls == ["a"]
    assert exit_code(run) == 1


def test_input_error_fails_the_page_before_analytic_or_vendor():
    vendor = FakeVendor(VISION_STAGES)
    model = FakeCostModel(VISION_STAGES)
    pages = [_page("bad", 0, 0, error="bad.png: not a readable image"), _page("good")]
    run = _run(_verifier(vendor=vendor, model=model), pages)
    assert run.pages[0].error_kind == "input" and run.pages[0].error == "bad.png: not a readable image"
    assert run.pages[0].workload is None
    assert vendor.calls == ["good"] and model.calls == 1
    # prefetch sees only the workloads that were built (one: the bad page has none)
    assert len(vendor.prefetched) == 1 and [w.width for w in vendor.prefetched[0]] == [800]
    assert exit_code(run) == 2


def test_workload_error_is_an_input_error():
    # 20000 x 20000 = 4e8 pixels, above the workload's 2e8 limit (decompression-bomb guard): WorkloadError.
    run = _run(_verifier(), [_page("huge", 20_000, 20_000), _page("ok")])
    assert run.pages[0].error_kind == "input" and "pixels" in run.pages[0].error
    assert run.pages[1].passed


def test_received_workload_mismatch_is_a_vendor_error():
    # 800x1000 in gundam: aspect 0.8 -> grid 2 cols x 3 rows (6 crops); the fake vendor claims 3x2.
    vendor = FakeVendor(VISION_STAGES, traces={"a": {"received": {"w_crop": 3, "h_crop": 2, "n_crops": 6}}})
    run = _run(_verifier(vendor=vendor), [_page("a"), _page("b")])
    a = run.pages[0]
    assert a.error_kind == "vendor" and a.rows == []
    assert "w_crop: workload 2 vs vendor 3" in a.error and "h_crop: workload 3 vs vendor 2" in a.error
    assert "n_crops" not in a.error  # 6 == 6
    assert run.pages[1].passed
    assert exit_code(run) == 3


def test_vendor_running_another_number_of_decode_steps_is_a_vendor_error():
    # The workload asks for 2 decode steps; the trace records the steps run as received.decode_forwards.
    vendor = FakeVendor(STAGES, traces={"a": {"received": {"decode_forwards": 3}}})
    run = _run(_verifier(vision_only=False, vendor=vendor), [_page("a"), _page("b")])
    a = run.pages[0]
    assert a.error_kind == "vendor" and "decode_tokens: workload 2 vs vendor 3" in a.error
    assert run.pages[1].passed


@pytest.mark.parametrize(
    "trace",
    [
        {"coverage": {"uncounted_ops": [{"op": "aten.weird_matmul.default", "calls": 2}]}},
        {"coverage": {"uncounted_ops": ["aten.weird_matmul.default"]}},
        {"complete": False},
    ],
    ids=["uncounted-dict", "uncounted-name", "incomplete-flag"],
)
def test_incomplete_coverage_fails_the_page_with_exit_1(trace):
    vendor = FakeVendor(VISION_STAGES, traces={"a": trace})
    run = _run(_verifier(vendor=vendor), [_page("a"), _page("b")])
    a = run.pages[0]
    assert a.error_kind == "coverage" and not a.passed and a.rows == []
    assert "counter coverage incomplete" in a.error
    if "coverage" in trace:
        assert "aten.weird_matmul.default" in a.error
    assert run.pages[1].passed
    assert exit_code(run) == 1


def test_discrepancy_rows_and_gap_family():
    # Vendor sam/global 1020 vs analytic 1000: |1000 - 1020| / 1020 = 1.96% > 1% -> fail.
    # Vendor clip/crops 1005 vs 1000: 5 / 1005 = 0.50% <= 1% -> pass.
    # Families: vendor mm 1020 vs analytic mm 1000 -> the gap (20) is in mm.
    stages = _stages(VISION_STAGES, sam__global=1020, clip__crops=1005)
    breakdown = {"sam": {"global": {"aten.addmm.default": {"flops": 1020, "family": "mm"}}}}
    vendor = FakeVendor(VISION_STAGES, traces={"a": {"stages": stages, "op_breakdown": breakdown}})
    run = _run(_verifier(vendor=vendor), [_page("a")])
    rows = {(r.stage, r.part): r for r in run.pages[0].rows if r.metric == "tensor_flops"}
    sam = rows["sam", "global"]
    assert sam.passed is False and sam.vendor == 1020 and sam.analytic == 1000 and sam.abs_delta == -20
    assert sam.rel_delta == pytest.approx(20 / 1020) and sam.tolerance == 0.01
    assert sam.gap_family == "mm"
    assert rows["clip", "crops"].passed is True and rows["clip", "crops"].rel_delta == pytest.approx(5 / 1005)
    assert run.pages[0].error is None and not run.pages[0].passed
    assert run.verdict == "FAIL" and exit_code(run) == 1


def test_zero_on_one_side_only_fails_and_zero_on_both_passes():
    # Analytic 1000 everywhere; vendor projector/crops 0 -> rel delta inf -> fail, "zero on one side only".
    vendor = FakeVendor(VISION_STAGES, traces={"a": {"stages": _stages(VISION_STAGES, projector__crops=0)}})
    model = FakeCostModel(VISION_STAGES)
    run = _run(_verifier(vendor=vendor, model=model), [_page("a")])
    row = next(r for r in run.pages[0].rows if (r.stage, r.part, r.metric) == ("projector", "crops", "tensor_flops"))
    assert row.passed is False and row.rel_delta == float("inf") and row.note == "zero on one side only"

    both_zero = FakeVendor(VISION_STAGES, traces={"a": {"stages": _stages(VISION_STAGES, tensor_flops=0)}})

    class ZeroModel(FakeCostModel):
        def estimate(self, workload: VisionWorkload) -> FakeEstimate:
            return FakeEstimate(_stages(VISION_STAGES, tensor_flops=0))

    run = _run(_verifier(vendor=both_zero, model=ZeroModel(VISION_STAGES)), [_page("a")])
    assert run.pages[0].passed and exit_code(run) == 0


def test_per_stage_tolerance_is_used():
    # Vendor sam/global 1020 vs 1000: 1.96%, outside the 1% default but inside a sam tolerance of 2%.
    vendor = FakeVendor(VISION_STAGES, traces={"a": {"stages": _stages(VISION_STAGES, sam__global=1020)}})
    verifier = _verifier(vendor=vendor)
    verifier.cfg.tolerances = Tolerances(overrides={"sam": 0.02})
    run = _run(verifier, [_page("a")])
    assert run.pages[0].passed and exit_code(run) == 0


def test_end_to_end_stages_are_compared():
    run = _run(_verifier(vision_only=False), [_page("a")])
    gated = {(r.stage, r.part) for r in run.pages[0].rows if r.passed is not None}
    assert gated == set(leaf_paths(STAGES))  # 10 leaves: 3 x 2 vision + prefill/decode x decoder/lm_head
    assert exit_code(run) == 0


def test_run_metadata():
    run = _run(_verifier(), [_page("a")])
    assert run.command == "test" and run.config["vision_only"] is True
    assert run.environment["backend"] == "fake" and "python" in run.environment
    assert len(run.run_id) == len("20260101-000000") and run.wall_s >= 0


# ---- exit code precedence ----------------------------------------------------------------------------


def _result(kind: str) -> PageResult:
    """A page in one of the states exit_code distinguishes."""
    res = PageResult(page=_page(kind))
    gated = ComparisonRow(kind, "sam", "global", "tensor_flops", 1.0, 1.0, 0.0, 0.0, 0.01, True)
    if kind == "pass":
        res.rows = [gated]
    elif kind == "discrepancy":
        res.rows = [ComparisonRow(kind, "sam", "global", "tensor_flops", 1.0, 2.0, 1.0, 1.0, 0.01, False, "mm")]
    else:
        res.error, res.error_kind = f"{kind} went wrong", kind
    return res


def _run_of(*kinds: str) -> RunResult:
    return RunResult("r", "test", {}, {}, [_result(k) for k in kinds], "t0", "t1", 0.0)


@pytest.mark.parametrize(
    ("kinds", "code"),
    [
        ((), 0),
        (("pass",), 0),
        (("pass", "discrepancy"), 1),
        (("pass", "coverage"), 1),
        (("pass", "analytic"), 1),
        (("pass", "vendor"), 3),
        (("pass", "input"), 2),
        # precedence: 1 (discrepancy / incomplete count / analytic) > 3 (vendor) > 2 (input) > 0
        (("discrepancy", "vendor", "input"), 1),
        (("coverage", "vendor"), 1),
        (("analytic", "input"), 1),
        (("vendor", "input"), 3),
        (("input", "input"), 2),
    ],
)
def test_exit_code_precedence(kinds, code):
    assert exit_code(_run_of(*kinds)) == code


@pytest.mark.parametrize(
    ("kinds", "verdict", "code"),
    [
        (("pass",), "PASS", 0),
        (("pass", "discrepancy"), "FAIL", 1),
        (("pass", "analytic"), "FAIL", 1),
        (("pass", "coverage"), "INCOMPLETE COUNT", 1),
        (("coverage", "vendor"), "INCOMPLETE COUNT", 1),
        (("discrepancy", "coverage", "vendor"), "FAIL", 1),
        (("pass", "vendor"), "ERROR", 3),
        (("pass", "input"), "ERROR", 2),
    ],
)
def test_verdict_and_exit_code_tell_one_story(kinds, verdict, code):
    run = _run_of(*kinds)
    assert (run.verdict, exit_code(run)) == (verdict, code)


# ---- config ------------------------------------------------------------------------------------------


def test_verify_config_to_dict_is_json_serialisable():
    cfg = VerifyConfig(
        command="run_verify_end2end",
        tolerances=Tolerances(default=0.02, overrides={"decode": 0.05, "sam.io_bytes": 0.1}),
        analytic_overrides=["vision.clip.num_layers=23"],
        vendor_dir="/snap",
    )
    d = json.loads(json.dumps(cfg.to_dict(), allow_nan=False))
    assert d["tolerances"]["default"] == 0.02 and d["tolerances"]["per_metric"]["peak_bytes"] == 0.10
    assert d["tolerances"]["overrides"] == {"decode": 0.05, "sam.io_bytes": 0.1}
    assert d["stages"] == list(STAGES)
    assert d["analytic_overrides"] == ["vision.clip.num_layers=23"]
    assert d["vendor_dir"] == "/snap" and d["decode_tokens"] == 16
    vision = VerifyConfig(command="run_verify_end2end_vision", vision_only=True).to_dict()
    assert json.loads(json.dumps(vision))["stages"] == list(VISION_STAGES)


# ---- the measurer behind the runner: batched (out-of-process) backends ------------------------------


@dataclass
class FakeWorkerBackend(OutOfProcessBackend):
    """Stands in for remote-code: `measure_dicts` measures a batch in one worker; one slot may fail."""

    name = "fake-worker"
    fail_widths: set[int] = field(default_factory=set)
    batches: list[list[int]] = field(default_factory=list)

    def environment(self) -> dict[str, Any]:
        return {"backend": self.name}

    def measure_dicts(
        self,
        workloads: list[VisionWorkload],
        *,
        device: str,
        vision_only: bool,
        execution: str = "real",
        dtype_reason: str | None = None,
    ) -> list[Any]:
        self.batches.append([w.width for w in workloads])
        out: list[Any] = []
        for w in workloads:
            if w.width in self.fail_widths:
                out.append(RuntimeError(f"worker died on {w.width}x{w.height}\nTraceback ..."))
            else:
                out.append({"complete": True, "stages": _stages(VISION_STAGES), "received": {}})
        return out


def _measurer(backend: FakeWorkerBackend):
    from verify.vendor_measure import VendorMeasurer

    cfg = VerifyConfig(command="test", vision_only=True, decode_tokens=0, device="meta", backend="remote-code")
    return VendorMeasurer(cfg, backend, cache=None, code_hashes={"vendor_shim": "0" * 64}, versions={})


def test_batched_backend_runs_once_per_signature_and_reports_failures_per_page():
    # 800x1000 and 1654x2339 share the 2x3 grid (one signature); 500x400 has no crops; 900x600 fails.
    backend = FakeWorkerBackend(fail_widths={900})
    verifier = _verifier(vendor=None)
    verifier.measure = _measurer(backend)
    pages = [_page("a"), _page("b", 1654, 2339), _page("c", 500, 400), _page("d", 900, 600)]
    run = _run(verifier, pages)
    assert len(backend.batches) == 1 and sorted(backend.batches[0]) == [500, 800, 900]  # one worker, 3 signatures
    assert [p.passed for p in run.pages] == [True, True, True, False]
    d = run.pages[3]
    assert d.error_kind == "vendor" and d.error == "RuntimeError: worker died on 900x600"  # one line
    assert exit_code(run) == 3


def test_batched_backend_fresh_measurements_are_not_cache_hits():
    verifier = _verifier()
    verifier.measure = _measurer(FakeWorkerBackend())
    run = _run(verifier, [_page("a"), _page("b", 1654, 2339), _page("c", 500, 400)])
    # a: measured now; b: same signature as a (served from memory); c: measured now.
    assert [p.cache_hit for p in run.pages] == [False, True, False]
