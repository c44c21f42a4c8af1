"""The decode-step cache: hits and misses, what a crash or a bad file leaves, and the verifier measuring each key
count once (`verify.step_cache`, `verify.vendor_measure`).  No expected figure here is measured: the store tests
use records written by hand, the run test counts which key counts were executed and where."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from core.workload import VisionWorkload
from vendor_shim.decode_steps import StepRecord
from verify.runner import VerifyConfig
from verify.step_cache import StepCache
from verify.vendor_measure import VendorMeasurer, _missing_runs

SIG = "ab" * 32


def _step(keys: int) -> StepRecord:
    return StepRecord(
        keys=keys,
        cells={"decoder": {"aten.mm.default": [2 * keys, 0, 8, 8, 8, 0, 1]}},
        calls=[],
        kv_resident=40 * keys,
        experts_hit=[6],
        classes={"aten.mm.default": "counted"},
    )


def test_hit_and_miss_in_memory_and_across_runs(tmp_path):
    store = StepCache(tmp_path)
    assert store.get(SIG, range(10, 13)) == {}
    store.put(SIG, [_step(10), _step(11)])
    assert sorted(store.get(SIG, range(10, 13))) == [10, 11]  # 12 is a miss
    files = list((tmp_path / "ab" / SIG).iterdir())
    assert [f.name for f in files] == ["10-11.json"]
    again = StepCache(tmp_path)  # the next run reads what this one wrote
    assert again.get(SIG, [11]) == {11: _step(11)}
    memory_only = StepCache(None)
    memory_only.put(SIG, [_step(5)])
    assert memory_only.get(SIG, [5]) == {5: _step(5)}


def test_bad_files_are_misses_and_removed_and_a_killed_writers_temporary_is_ignored(tmp_path):
    store = StepCache(tmp_path)
    store.put(SIG, [_step(10), _step(11)])
    folder = tmp_path / "ab" / SIG
    good = folder / "10-11.json"
    entry = json.loads(good.read_text())
    (folder / "20-21.json").write_text(good.read_text()[:50])  # truncated: a crash without os.replace
    (folder / "30-30.json").write_text(json.dumps(entry))  # steps 10, 11 under a name saying 30
    (folder / "40-40.json").write_text(json.dumps(entry | {"key": "cd" * 32}))  # another signature's entry
    bad_step = entry | {"steps": [entry["steps"][0] | {"classes": {}}]}
    (folder / "50-50.json").write_text(json.dumps(bad_step))
    (folder / ".steps-x.tmp").write_text("{")  # what a killed writer leaves
    fresh = StepCache(tmp_path)
    assert sorted(fresh.get(SIG, range(0, 60))) == [10, 11]
    assert sorted(p.name for p in folder.iterdir()) == [".steps-x.tmp", "10-11.json"]


def test_a_stale_ledger_is_rebuilt_only_for_a_run_worth_it():
    """`StepCache.run`: the stored steps with their sums (by hand: 2*keys summed), None for a missing key count,
    and None (the records alone) when the ledger is out of date and the run is under 1/LEDGER_FACTOR of the store."""
    from verify.step_cache import LEDGER_FACTOR

    store = StepCache(None)
    store.put(SIG, [_step(k) for k in range(10, 10 + 8 * LEDGER_FACTOR)])
    run = store.run(SIG, range(10, 18))  # 8 of 64: worth a ledger
    assert run is not None and [s.keys for s in run.records] == list(range(10, 18))
    assert run.sums.cells["decoder"]["aten.mm.default"][0] == 2 * sum(range(10, 18))
    assert store.run(SIG, range(70, 80)) is None  # 74..79 were never stored
    store.put(SIG, [_step(k) for k in range(74, 80)])  # the ledger is out of date now
    assert store.run(SIG, range(10, 13)) is None  # 3 of 70: the page adds its steps one by one
    assert store.run(SIG, range(10, 19)) is not None  # 9 of 70: rebuilt
    assert store.run(SIG, range(10, 13)) is not None  # up to date again: served whatever the length


def test_only_consecutive_key_counts_are_stored(tmp_path):
    with pytest.raises(ValueError, match="not consecutive"):
        StepCache(tmp_path).put(SIG, [_step(10), _step(12)])
    with pytest.raises(ValueError, match="sha256"):
        StepCache(tmp_path).get("../x", [1])


def test_missing_runs_are_maximal_consecutive_ranges():
    have = {k: None for k in (3, 4, 8)}
    assert _missing_runs(range(1, 11), have) == [(1, 2), (5, 7), (9, 10)]
    assert _missing_runs(range(3, 5), have) == []


def _workload(prompt: int, k: int) -> VisionWorkload:
    return VisionWorkload.from_page(
        640, 640, "gundam", prompt_tokens=prompt, decode_tokens=k, impl="hf", dtype="bfloat16"
    )


def _executed_steps(monkeypatch) -> list[tuple[str, int, int]]:
    """(mode, first key count, last) of every run the measurer executes decode steps in, as they happen."""
    executed: list[tuple[str, int, int]] = []
    run = VendorMeasurer._run

    def wrapped(self, w, **steps):
        if w.decode_tokens and "decode_steps" not in steps:
            executed.append((w.mode, w.prefill_len + 1, w.prefill_len + w.decode_tokens))
        return run(self, w, **steps)

    monkeypatch.setattr(VendorMeasurer, "_run", wrapped)
    return executed


def test_the_verifier_measures_each_key_count_once_and_pages_get_the_same_steps(tmp_path, monkeypatch):
    """Two pages whose key ranges overlap: the first runs its own steps, the second measures only the key counts
    the first did not reach (a sweep page), then takes all its steps from the store; a second run measures none."""
    pytest.importorskip("transformers.models.unlimited_ocr")
    cfg = VerifyConfig(
        command="test", decode_tokens=None, cache_dir=str(tmp_path / "traces"), vision_device="meta", dtype="bfloat16"
    )
    a, b = _workload(12, 6), _workload(16, 4)  # b's prefill is 4 longer: a's last 2 steps are b's first 2
    executed = _executed_steps(monkeypatch)
    m = VendorMeasurer.create(cfg)
    ta, _ = m(a, None)
    tb, _ = m(b, None)
    p = b.prefill_len
    assert executed == [("gundam", a.prefill_len + 1, p + 2), ("tiny", p + 3, p + 4)]
    assert tb["received"]["execution"]["decode_steps_from_store"] == 4
    assert [s["decoder"] for s in ta["stages"]["decode"]["steps"][-2:]] == [
        s["decoder"] for s in tb["stages"]["decode"]["steps"][:2]
    ]
    executed.clear()
    again = VendorMeasurer.create(cfg)
    again.cache = None  # page traces not served: the steps must come from the step store on disk
    tb2, _ = again(b, None)
    assert executed == [] and tb2["stages"] == tb["stages"]


def test_prefetch_measures_the_union_of_the_pages_key_counts_in_one_sweep(tmp_path, monkeypatch):
    """Before the first page the run measures every key count its uncached pages need: the two pages' overlapping
    ranges as one sweep (one prefill, not one for each page that decodes further than the last), then both pages
    take all their steps from the store.  A range under a part's minimum and a lone page with one job are left to
    the pages' own runs, and a page whose trace is cached needs none."""
    pytest.importorskip("transformers.models.unlimited_ocr")
    from verify import step_workers

    cfg = VerifyConfig(
        command="test", decode_tokens=None, cache_dir=str(tmp_path / "traces"), vision_device="meta", dtype="bfloat16"
    )
    a, b = _workload(12, 6), _workload(16, 4)  # b's prefill is 4 longer: key counts a+1..a+6 and a+5..a+8
    executed = _executed_steps(monkeypatch)
    m = VendorMeasurer.create(cfg)
    m.prefetch([a, b])
    assert executed == []  # 8 key counts: under a part's minimum, cheaper in the pages' own runs
    monkeypatch.setattr(step_workers, "MIN_STEPS_PER_JOB", 2)
    m.prefetch([a])
    assert executed == []  # one page, one job: its own run measures its steps
    notes: list[str] = []
    m.prefetch([a, b], notify=notes.append)
    assert executed == [("tiny", a.prefill_len + 1, b.prefill_len + 4)]
    first, last = a.prefill_len + 1, b.prefill_len + 4  # 8 key counts: a's 6, then b's last 2
    assert notes == [f"measuring 8 decode steps (key counts {first} to {last}) in 1 process before the first page"]
    ta, _ = m(a, None)
    tb, _ = m(b, None)
    assert len(executed) == 1  # nothing more executed a decode step
    assert ta["received"]["execution"]["decode_steps_from_store"] == 6
    assert tb["received"]["execution"]["decode_steps_from_store"] == 4
    executed.clear()
    VendorMeasurer.create(cfg).prefetch([a, b])  # both traces are cached now
    assert executed == []


def test_a_step_store_that_cannot_be_written_degrades_to_memory(tmp_path, monkeypatch):
    cfg = VerifyConfig(command="test", decode_tokens=2, cache_dir=str(tmp_path / "traces"))
    m = VendorMeasurer.create(cfg)
    assert m.steps is not None and m.steps.root == Path(cfg.cache_dir) / "decode-steps"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StepCache, "put", full)
    m._keep_steps(SIG, [_step(1)], {})
    assert m.steps.root is None and "decode steps" in (m.cache_problem or "")


def test_a_read_only_cache_serves_its_stored_steps_and_keeps_new_ones_in_memory(tmp_path, monkeypatch):
    import tempfile

    cfg = VerifyConfig(command="test", decode_tokens=2, cache_dir=str(tmp_path / "traces"))
    StepCache(Path(cfg.cache_dir) / "decode-steps").put(SIG, [_step(10)])

    def read_only(*_a, **_k):  # as the kernel answers for a read-only mount (root writes through chmod)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    m = VendorMeasurer.create(cfg)
    assert (m.cache_problem or "").startswith("read-only") and m.steps is not None
    assert m.steps.get(SIG, [10]) == {10: _step(10)}  # stored steps served
    m._keep_steps(SIG, [_step(11)], {})  # a new one: kept in memory, no second warning
    assert m.steps.root is None and m.cache_problem.startswith("read-only")
    assert sorted(m.steps.get(SIG, [10, 11])) == [10, 11]


def test_the_page_line_says_when_a_pages_steps_were_shared():
    import io

    from rich.console import Console

    from reports.model import PageResult, PageSpec
    from verify.cli import _page_logger

    out = io.StringIO()
    log = _page_logger(Console(file=out, width=200), 2)
    page = PageSpec("p1", 640, 640, "embedded")
    wl = {"w_crop": 1, "h_crop": 1, "n_crops": 0}
    shared = {"received": {"execution": {"mode": "shapes", "decode_steps_from_store": 1400}}}
    log(PageResult(page=page, workload=wl, trace=shared))
    log(PageResult(page=page, workload=wl, trace={"received": {"execution": {"mode": "shapes"}}}))
    first, second = out.getvalue().splitlines()
    assert "measured (its 1,400 decode steps shared by key count)" in first
    assert second.startswith("[2/2] p1: ok, no crops, measured, ")


def test_split_cuts_missing_ranges_into_nearly_equal_parts(monkeypatch):
    from verify import step_workers
    from verify.step_workers import split

    assert split([(917, 2516)], 2) == [[(917, 1716)], [(1717, 2516)]]
    assert split([(1, 300), (400, 500)], 2) == [[(1, 201)], [(202, 300), (400, 500)]]  # 201 steps each
    assert split([(1, 150)], 4) == [[(1, 150)]]  # under MIN_STEPS_PER_JOB a part: one job
    monkeypatch.setattr(step_workers, "MIN_STEPS_PER_JOB", 1)
    assert split([(5, 7)], 8) == [[(5, 5)], [(6, 6)], [(7, 7)]]


def test_split_balances_the_parts_cost_when_steps_cost_more_with_more_keys(monkeypatch):
    """By hand: steps 1..4 costing 1, 2, 3, 4 (total 10, 5 a part) are cut after the part's cost reaches 5: 1+2+3
    and 4; the default (uniform) cut is 2 and 2.  A start cost counts toward the part it opens."""
    from verify import step_workers
    from verify.step_workers import split

    monkeypatch.setattr(step_workers, "MIN_STEPS_PER_JOB", 1)
    assert split([(1, 4)], 2) == [[(1, 2)], [(3, 4)]]
    assert split([(1, 4)], 2, step=lambda k: k) == [[(1, 3)], [(4, 4)]]
    # ranges 1..2 and 10..11, steps of 1, a sweep starting at k costs k: 1+1+1 = 3 then 10+1+1 = 12 (total 15,
    # 7.5 a part): the first range fills the first part, the second opens the next
    assert split([(1, 2), (10, 11)], 2, start=lambda k: k) == [[(1, 2)], [(10, 11)]]


def test_steps_measured_by_a_worker_process_equal_the_main_processes(tmp_path, monkeypatch):
    """--jobs 2: half of a page's key counts come from a spawned worker with its own model; the page's trace equals
    the trace of the same page measured in one process."""
    pytest.importorskip("transformers.models.unlimited_ocr")
    from verify import step_workers

    monkeypatch.setattr(step_workers, "MIN_STEPS_PER_JOB", 2)
    page = _workload(12, 6)
    traces = []
    for jobs in (1, 2):
        cfg = VerifyConfig(
            command="test",
            decode_tokens=None,
            cache_dir=str(tmp_path / f"traces-{jobs}"),
            vision_device="meta",
            dtype="bfloat16",
            jobs=jobs,
        )
        m = VendorMeasurer.create(cfg)
        try:
            traces.append(m(page, None)[0])
            assert (m.workers is not None) == (jobs == 2)
        finally:
            m.close()
    one, two = traces
    assert two["received"]["execution"]["decode_steps_from_store"] == 6
    assert two["stages"] == one["stages"] and two["op_breakdown"].get("decode") == one["op_breakdown"].get("decode")


def test_a_part_no_worker_takes_is_measured_by_the_main_process(tmp_path, monkeypatch):
    """The pool broken or unable to start: the page is still measured, every step in this process."""
    pytest.importorskip("transformers.models.unlimited_ocr")
    from verify import step_workers

    monkeypatch.setattr(step_workers, "MIN_STEPS_PER_JOB", 2)

    def broken(self, *_a, **_k):
        raise RuntimeError("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(step_workers.StepWorkers, "submit", broken)
    cfg = VerifyConfig(
        command="test",
        decode_tokens=None,
        cache_dir=str(tmp_path / "traces"),
        vision_device="meta",
        dtype="bfloat16",
        jobs=2,
    )
    m = VendorMeasurer.create(cfg)
    trace, _ = m(_workload(12, 6), None)
    m.close()
    assert trace["complete"] and trace["received"]["execution"]["decode_steps_from_store"] == 6
