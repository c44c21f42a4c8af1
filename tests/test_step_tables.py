"""report.json's decode-step tables (`reports.step_tables`) and the run copy every report is written from
(`reports.safe.safe_tree`'s check that spares the walk).

Expected tables are counted by hand from the pages built here; the round trip is checked against the document as
written out per page (two independent paths: no tabling, and tabling then expanding).
"""

from __future__ import annotations

import copy
import json

import pytest

from reports.document import read_report
from reports.model import PageResult, PageSpec, RunResult
from reports.safe import _copy, safe_tree
from reports.step_tables import StepTableError, expand_steps, table_steps


def _leaf(keys: int) -> dict[str, int]:
    return {"tensor_flops": 2 * keys, "kv_cache_bytes": 8 * keys, "calls": 1}


def _page(page_id: str, prefill: int, steps: int, vision_calls: int = 2) -> dict:
    """A page document whose decode steps attend over prefill+1 .. prefill+steps keys; each step's values depend
    on its key count only, as a real step's do."""
    keys = range(prefill + 1, prefill + steps + 1)
    trace_steps = [{"decoder": _leaf(k), "lm_head": _leaf(0)} for k in keys]
    calls = [{"index": i, "root": "sam", "stage": "sam", "step": 0, "wall_s": 0.5} for i in range(vision_calls)]
    calls.append({"index": vision_calls, "root": "decoder", "stage": "prefill", "step": 0, "wall_s": 0.1})
    for t, k in enumerate(keys, start=1):
        for part in ("decoder", "lm_head"):
            calls.append(
                {
                    "index": len(calls),
                    "root": part,
                    "stage": "decode",
                    "step": t,
                    "input_shapes": [[1, k]],
                    "wall_s": 0.01 * k,
                }
            )
    return {
        "page": {"page_id": page_id},
        "analytic": {"stages": {"decode": {"decoder": {}, "steps": [{"decoder": {"keys": k}} for k in keys]}}},
        "trace": {"stages": {"decode": {"decoder": {}, "steps": trace_steps}}, "calls": calls, "schema": "x"},
    }


def _doc(*pages: dict) -> dict:
    return {"report_format": 2, "run_id": "r", "pages": list(pages)}


def test_pages_decoding_past_the_same_key_counts_share_rows_counted_by_hand():
    # A: keys 11..14 (4 new rows 0-3); B: keys 11..12 (rows 0-1) then 20 is not reached; C: keys 13..16 (rows 2-3
    # again, then 2 new rows 4-5) -> runs A [[0,4]], B [[0,2]], C [[2,4]]
    doc = _doc(_page("A", 10, 4), _page("B", 10, 2), _page("C", 12, 4, vision_calls=5))
    tabled = table_steps(doc)
    runs = {p["page"]["page_id"]: p["trace"]["stages"]["decode"]["steps"]["runs"] for p in tabled["pages"]}
    assert runs == {"A": [[0, 4]], "B": [[0, 2]], "C": [[2, 4]]}
    assert len(tabled["step_tables"]["trace_steps"]) == 6
    assert len(tabled["step_tables"]["analytic_steps"]) == 6
    # decode calls: one group per step (its two calls), page keys out; C's vision calls differ, its steps do not
    assert len(tabled["step_tables"]["decode_calls"]) == 6
    assert tabled["step_tables"]["decode_calls"][0] == [
        {"root": "decoder", "input_shapes": [[1, 11]], "wall_s": 0.11},
        {"root": "lm_head", "input_shapes": [[1, 11]], "wall_s": 0.11},
    ]
    c = tabled["pages"][2]["trace"]
    assert [x["stage"] for x in c["calls"]] == ["sam"] * 5 + ["prefill"]
    assert c["decode_calls"] == {"table": "decode_calls", "runs": [[2, 4]]}
    assert doc == _doc(_page("A", 10, 4), _page("B", 10, 2), _page("C", 12, 4, vision_calls=5))  # input untouched


def test_tabled_then_expanded_is_the_document_written_out_per_page():
    doc = _doc(_page("A", 10, 4), _page("B", 10, 2), _page("C", 12, 4, vision_calls=5), {"page": {"page_id": "bad"}})
    again = read_report(json.loads(json.dumps(table_steps(doc))))
    assert again == doc
    assert read_report(doc) is doc  # format 1 (nothing tabled) is read as it is


def test_decode_calls_out_of_step_order_stay_as_they_are():
    page = _page("A", 10, 3)
    calls = page["trace"]["calls"]
    calls[-1], calls[-3] = calls[-3], calls[-1]  # step 3's lm_head before step 2's: not the tail in step order
    tabled = table_steps(_doc(page))
    assert "decode_calls" not in tabled["pages"][0]["trace"]
    assert tabled["pages"][0]["trace"]["calls"] == calls
    assert expand_steps(json.loads(json.dumps(tabled)))["pages"][0] == page


def test_decode_calls_sharing_their_lists_are_one_row_and_equal_looking_values_of_other_types_are_not():
    """Calls whose lists and dicts are the same objects (pages given one stored step) are one row without a JSON
    key; equal values in distinct objects are one row too (by JSON); but 1 and True, 0.0 and -0.0 are kept apart,
    as their JSON is."""
    shapes, ops = [[1, 11]], {"aten.mm.default": 5}

    def page(page_id: str, wall: float, flops: object, own: bool) -> dict:
        call = {"root": "decoder", "stage": "decode", "part": "decoder", "input_shapes": shapes, "ops": ops}
        call |= {"wall_s": wall, "tensor_flops": flops}
        if own:
            call |= {"input_shapes": [[1, 11]], "ops": {"aten.mm.default": 5}}
        return {"page": {"page_id": page_id}, "trace": {"calls": [call | {"index": 0, "step": 1}]}}

    doc = _doc(page("A", 0.0, 5, False), page("B", 0.0, 5, False), page("C", 0.0, 5, True))
    doc["pages"] += [page("D", -0.0, 5, False), page("E", 0.0, True, False)]
    tabled = table_steps(doc)
    runs = [p["trace"]["decode_calls"]["runs"] for p in tabled["pages"]]
    assert runs == [[[0, 1]], [[0, 1]], [[0, 1]], [[1, 1]], [[2, 1]]]
    assert read_report(json.loads(json.dumps(tabled))) == json.loads(json.dumps(doc))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["step_tables"].pop("trace_steps"),
        lambda d: d["pages"][0]["trace"]["stages"]["decode"]["steps"]["runs"].append([5, 1]),
        lambda d: d["pages"][0]["trace"]["decode_calls"].update(runs=[[0, -1]]),
        lambda d: d["pages"][0]["analytic"]["stages"]["decode"]["steps"].update(table="trace_steps"),
    ],
)
def test_a_damaged_table_is_one_error_naming_the_page(damage):
    tabled = json.loads(json.dumps(table_steps(_doc(_page("A", 10, 4)))))
    damage(tabled)
    with pytest.raises(StepTableError, match=r"step_tables|pages\[0\]"):
        expand_steps(tabled)


def _run(page_id: str, trace: dict) -> RunResult:
    spec = PageSpec(page_id, 10, 10, "files", image_path=f"/x/{page_id}.png")
    return RunResult("r", "c", {"k": page_id}, {}, [PageResult(spec, trace=trace)], "t0", "t1", 1.0)


@pytest.mark.parametrize(
    "odd",
    [
        "a\x00b",  # a C0 control (json writes \u0000)
        "bell\x07",
        "cr\r",  # json writes \r
        "del\x7f",  # DEL is ASCII: json writes it through
        "c1\x85",  # a C1 control
        "bidi\u202e",  # a format character
        "sep\u2028",
        "surrogate\udcff",  # a file name byte that is not UTF-8
        "zero\u200bwidth",
    ],
)
def test_safe_tree_finds_every_string_safe_text_changes_wherever_it_sits(odd):
    """The check that spares the walk must never pass a tree holding such a string, in a value, a key or a
    dataclass field: the result equals the full walk's."""
    for trace in ({"calls": [{"module": odd}]}, {"ops": {odd: 1}}, {"n": [1, 2.5, None, True, {"deep": [odd]}]}):
        for run in (_run("p", trace), _run(odd, {"calls": []})):
            assert safe_tree(run) == _copy(copy.deepcopy(run), {}) != run


def test_safe_tree_hands_back_what_holds_no_odd_string():
    trace = {"calls": [{"module": "model.vision_tower", "shape": [1, 3]}], "tab": "a\tb\nc", "text": "日本 é"}
    run = _run("p", trace)
    safe = safe_tree(run)
    assert safe == run
    assert safe.pages[0].trace is trace  # the same dict: nothing walked or copied
    alarm = {"text": "a literal \\b"}  # json writes \\b: a false alarm, walked, the same result
    assert safe_tree(_run("p", alarm)).pages[0].trace == alarm


@pytest.mark.parametrize("odd", ["a\x00b", "del\x7f", "bidi\u202e", "surrogate\udcff"])
def test_a_large_trace_is_checked_piece_by_piece_with_the_same_result_as_the_full_walk(odd):
    """Past BIG elements a tree is checked a dict value and a long list's unseen elements at a time: an odd string
    anywhere (a shared step, a call, a key deep down) is still found, and a clean tree comes back as itself."""
    from reports.safe import BIG

    shared = [{"decoder": {"tensor_flops": k, "calls": 1}} for k in range(BIG + 10)]

    def trace(where: str) -> dict:
        calls = [{"root": "decoder", "module": "model.layers", "ops": {"aten.mm.default": 1}} for _ in range(BIG)]
        t = {"stages": {"decode": {"steps": list(shared)}}, "calls": calls, "received": {"routing": [[6] * 11] * 600}}
        if where == "call":
            calls[BIG // 2] = {**calls[0], "module": odd}
        elif where == "key":
            t["received"]["routing"] = [[6] * 11] * 599 + [{odd: 1}]
        elif where == "step":
            t["stages"]["decode"]["steps"][7] = {"decoder": {odd: 1}}
        return t

    clean = _run("p", trace("none"))
    assert safe_tree(clean).pages[0].trace is clean.pages[0].trace
    for where in ("call", "key", "step"):
        run = _run("p", trace(where))
        assert safe_tree(run) == _copy(copy.deepcopy(run), {}) != run
    # two pages sharing the step entries: one check each, the result shares them as the input did
    pages = [PageResult(PageSpec(i, 10, 10, "files"), trace=trace("none")) for i in "ab"]
    two = RunResult("r", "c", {}, {}, pages, "t0", "t1", 1.0)
    out = safe_tree(two)
    assert out.pages[0].trace["stages"]["decode"]["steps"][3] is out.pages[1].trace["stages"]["decode"]["steps"][3]
