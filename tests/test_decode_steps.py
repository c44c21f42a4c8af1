"""Decode steps measured once per key count: records, the splice into a page's run, the step store.

Every expected FLOP figure is derived by hand (`test_vendor_hf.decoder_layer_flops`, from the published shapes);
the other metrics are compared between two independent paths: a page that executed its own decode steps, and the
same page given steps another (cheaper, differently shaped) page executed at the same key counts.
"""

from __future__ import annotations

import pytest

from core.workload import VisionWorkload
from vendor_shim import ModelCache, measure
from vendor_shim.backends.hf import HfBackend
from vendor_shim.decode_steps import StepLedger, StepRecord, StepRun, sweep_workload

pytest.importorskip("transformers.models.unlimited_ocr")

from test_vendor_hf import HID, VOCAB, decoder_layer_flops

LAYERS = 2


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache()


def _run(w: VisionWorkload, models: ModelCache, **kw):
    return measure(w, backend=HfBackend(num_text_layers=LAYERS), device="cpu", model_cache=models, fvcore=False, **kw)


def _page(k: int = 3) -> VisionWorkload:
    return VisionWorkload.from_page(500, 700, "small", prompt_tokens=5, decode_tokens=k, impl="hf", dtype="bfloat16")


def _comparable(trace: dict) -> dict:
    """What a page's trace must show identically whichever way its steps arrived.  Not: wall times and RSS; the
    run's own hollow counts; the generation path (it says where the steps came from); generate()'s bookkeeping
    between forwards (sampling, stopping checks: outside every stage, checked for zero tensor FLOPs in the run that
    executed it), i.e. the unattributed ops and their calls."""
    t = {k: v for k, v in trace.items() if k not in ("timing", "calls")}
    t["memory"] = {k: v for k, v in t["memory"].items() if k != "peak_rss_bytes"}
    t["received"] = {k: v for k, v in t["received"].items() if k not in ("execution", "generation_path")}
    t["op_breakdown"] = {k: v for k, v in t["op_breakdown"].items() if k != "unattributed"}
    t["coverage"] = t["coverage"] | {"ops_seen": {k: v["class"] for k, v in t["coverage"]["ops_seen"].items()}}
    return t


def test_a_page_given_steps_of_another_page_equals_its_own_run(models):
    page = _page()
    own_steps: list[StepRecord] = []
    own = _run(page, models, steps_out=own_steps).to_dict()
    # a tiny page whose prompt is padded so that its decode steps attend over the same key counts
    sweep = sweep_workload(page, page.prefill_len + 1, page.decode_tokens)
    assert sweep is not None and sweep.mode == "tiny" and sweep.prefill_len == page.prefill_len
    assert (sweep.n_image_tokens, page.n_image_tokens) == (73, 111)  # tiny (8+1)*8+1; small 640: (10+1)*10+1
    swept: list[StepRecord] = []
    _run(sweep, models, steps_out=swept)
    assert [s.keys for s in swept] == [s.keys for s in own_steps] == [page.prefill_len + t for t in (1, 2, 3)]
    assert [s.to_dict() | {"calls": None} for s in swept] == [s.to_dict() | {"calls": None} for s in own_steps]
    spliced = _run(page, models, decode_steps=swept).to_dict()
    assert spliced["received"]["execution"]["decode_steps_from_store"] == 3
    assert "then 3 decode steps executed by an earlier run" in spliced["received"]["generation_path"]
    assert _comparable(own) == _comparable(spliced)
    calls = [[c["root"], c["part"], c["step"], c["tensor_flops"], c["ops"], c["peak_bytes"]] for c in own["calls"]]
    assert calls == [
        [c["root"], c["part"], c["step"], c["tensor_flops"], c["ops"], c["peak_bytes"]] for c in spliced["calls"]
    ]
    # hand-derived figures at two key counts: decoder layers over prefill_len + t keys, lm_head on one row
    for t in (1, 3):
        step = spliced["stages"]["decode"]["steps"][t - 1]
        keys = page.prefill_len + t
        assert step["decoder"]["tensor_flops"] == sum(decoder_layer_flops(1, keys, i) for i in range(LAYERS))
        assert step["lm_head"]["tensor_flops"] == 2 * HID * VOCAB


def test_records_given_to_many_pages_are_given_by_reference_and_never_written(models):
    """The splice hands a page the record's own cells and precomputed leaf metrics (no copies: a run keeps its
    records and gives the same ones to every page past those key counts), so nothing downstream may write them:
    two pages given the same records leave them as they were and show the same decode stage."""
    page = _page()
    swept: list[StepRecord] = []
    _run(sweep_workload(page, page.prefill_len + 1, page.decode_tokens), models, steps_out=swept)
    before = [s.to_dict() for s in swept]
    first = _run(page, models, decode_steps=swept).to_dict()
    wider = VisionWorkload.from_page(
        700, 500, "small", prompt_tokens=5, decode_tokens=3, impl="hf", dtype="bfloat16"
    )  # another geometry, the same prefill length
    assert wider.prefill_len == page.prefill_len
    second = _run(wider, models, decode_steps=swept).to_dict()
    assert [s.to_dict() for s in swept] == before
    assert first["stages"]["decode"] == second["stages"]["decode"]
    assert all(first["stages"]["decode"]["steps"][t] is swept[t].trace_step for t in range(3))  # shared, not copied
    for t, step in enumerate(swept, start=1):  # the leaf metrics the record computed once are its cells' sums
        for part, ops in step.cells.items():
            assert first["stages"]["decode"]["steps"][t - 1][part]["tensor_flops"] == sum(c[0] for c in ops.values())


def test_a_page_given_its_steps_with_their_sums_equals_the_page_given_the_records(models):
    """A `StepRun` (the records and their sums taken at once from a `StepLedger`) gives the same trace, audit log
    included, as the records added step by step: the sums are a second path to the same figures."""
    page = _page(4)
    swept: list[StepRecord] = []
    _run(sweep_workload(page, page.prefill_len - 1, page.decode_tokens + 2), models, steps_out=swept)
    ledger = StepLedger({s.keys: s for s in swept})  # two steps more on each side than the page needs
    run = [s for s in swept if page.prefill_len < s.keys <= page.prefill_len + 4]
    sums = ledger.sums(page.prefill_len + 1, page.prefill_len + 4)
    assert sums is not None
    by_step = _run(page, models, decode_steps=run).to_dict()
    at_once = _run(page, models, decode_steps=StepRun(run, sums)).to_dict()
    assert _comparable(at_once) == _comparable(by_step)
    assert at_once["coverage"]["ops_seen"] == by_step["coverage"]["ops_seen"]
    assert at_once["op_breakdown"]["decode"] == by_step["op_breakdown"]["decode"]


def test_ledger_sums_are_the_steps_cells_added_up_and_refuse_a_gap():
    """Hand-made steps: the ledger's sums over a run are its cells added by hand; an op one step lacks is listed
    when another ran it; a class stays the first that is not non_float; a run over a missing key count is None."""

    def step(keys: int, mm: int, extra: bool, klass: str) -> StepRecord:
        cells = {"decoder": {"mm": [mm, 0, 10, 4, 8, 0, 2]}, "lm_head": {"mm": [7, 0, 1, 1, 1, 0, 1]}}
        if extra:
            cells["decoder"]["add"] = [0, 3, 6, 2, 0, 0, 1]
        classes = {"mm": "counted", **({"add": klass} if extra else {})}
        return StepRecord(keys=keys, cells=cells, calls=[], kv_resident=0, experts_hit=[], classes=classes)

    steps = {10: step(10, 100, False, ""), 11: step(11, 200, True, "non_float"), 12: step(12, 300, True, "counted")}
    steps[14] = step(14, 1, False, "")
    ledger = StepLedger(steps)
    sums = ledger.sums(10, 12)
    assert sums is not None
    assert sums.cells == {
        "decoder": {"mm": [600, 0, 30, 12, 24, 0, 6], "add": [0, 6, 12, 4, 0, 0, 2]},
        "lm_head": {"mm": [21, 0, 3, 3, 3, 0, 3]},
    }
    assert sums.classes == {"mm": "counted", "add": "counted"}  # add: non_float at 11, counted at 12
    assert ledger.sums(11, 11).classes == {"mm": "counted", "add": "non_float"}
    assert ledger.sums(12, 14) is None and ledger.sums(13, 14) is None  # 13 was never stored
    assert ledger.sums(14, 14).cells["decoder"] == {"mm": [1, 0, 10, 4, 8, 0, 2]}


def test_steps_for_the_wrong_key_counts_are_refused(models):
    page = _page(2)
    steps: list[StepRecord] = []
    _run(_page(3), models, steps_out=steps)
    from vendor_shim.errors import VendorRunError

    with pytest.raises(VendorRunError, match="stored decode step"):
        _run(page, models, decode_steps=steps[1:])  # keys prefill_len + 2, + 3 given as steps 1, 2
    with pytest.raises(VendorRunError, match="3 stored decode steps for a 2-step workload"):
        _run(page, models, decode_steps=steps)


def test_step_record_round_trip_and_malformed_records():
    rec = StepRecord(
        keys=10,
        cells={"decoder": {"aten.mm.default": [4, 0, 8, 8, 8, 0, 1]}},
        calls=[],
        kv_resident=40,
        experts_hit=[6],
        classes={"aten.mm.default": "counted"},
    )
    assert StepRecord.from_dict(rec.to_dict()) == rec
    bad = rec.to_dict() | {"classes": {}}
    with pytest.raises(ValueError, match="without its audit class"):
        StepRecord.from_dict(bad)
    with pytest.raises(ValueError, match="not a decode step record"):
        StepRecord.from_dict({"keys": 3})


def test_deepseek_ocr2_steps_of_a_smaller_page_equal_its_own(models):
    """DeepSeek-OCR 2 (Qwen2 encoder vision, the same MoE decoder): a base-mode page (1024: 257 image tokens) and the
    small-mode page (768: 145) padded to the same prefill execute the same decode steps, metric for metric."""
    be = HfBackend(num_text_layers=LAYERS, family="deepseek-ocr-2")
    page = VisionWorkload.from_page(
        700, 700, "base", prompt_tokens=5, decode_tokens=2, impl="hf", dtype="bfloat16", model="deepseek-ocr-2"
    )
    sweep = sweep_workload(page, page.prefill_len + 1, 2)
    assert sweep is not None and (sweep.mode, sweep.n_image_tokens, page.n_image_tokens) == ("small", 145, 257)
    own: list[StepRecord] = []
    swept: list[StepRecord] = []
    for w, out in ((page, own), (sweep, swept)):
        measure(w, backend=be, device="cpu", model_cache=models, fvcore=False, vision_device="meta", steps_out=out)
    assert [s.to_dict() | {"calls": None} for s in swept] == [s.to_dict() | {"calls": None} for s in own]
    assert [s.keys for s in own] == [page.prefill_len + 1, page.prefill_len + 2]


def test_vision_and_prefill_kept_by_signature_serve_a_page_of_another_length(models):
    """Two pages of one signature but for the decode length: the second takes the first's vision and prefill
    (`BaseRuns`) and its own stored steps, and its trace equals the trace of running it whole."""
    from vendor_shim.harness import BaseRuns

    be = HfBackend(num_text_layers=LAYERS)
    steps: list[StepRecord] = []
    _run(_page(3), models, steps_out=steps)
    whole = _run(_page(2), models).to_dict()
    base = BaseRuns()
    first = measure(
        _page(3), backend=be, device="cpu", model_cache=models, fvcore=False, decode_steps=steps, base_runs=base
    ).to_dict()
    second = measure(
        _page(2), backend=be, device="cpu", model_cache=models, fvcore=False, decode_steps=steps[:2], base_runs=base
    ).to_dict()
    assert "vision_and_prefill_from" not in first["received"]["execution"]
    assert second["received"]["execution"]["vision_and_prefill_from"] == "an earlier run of the same signature"
    assert len(second["stages"]["decode"]["steps"]) == 2  # the kept run was a copy: the first's splice stayed its own
    assert _comparable(second) == _comparable(whole)
