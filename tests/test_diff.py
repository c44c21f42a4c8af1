"""`dsocr-diff` on hand-made traces and runs (every expected figure is written out below), bad input, run folders.

The hand-made traces are valid vendor traces (`validate_trace_dict` accepts them) whose op breakdown differs
in known ways: an op appears, one disappears, one changes only its call count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.workload import VisionWorkload
from drift.cli import main
from drift.compare import diff_sides, pairing_signature
from drift.load import DiffInputError, load_side
from drift.summary import headline
from vendor_shim.trace import SCHEMA, SCHEMA_VERSION, empty_stages, validate_trace_dict

REPO = Path(__file__).resolve().parents[1]
ENV = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0", "device": "cpu", "dtype": "float32"}
ENV |= {"backend": "hf", "code_hashes": {"modeling.py": "a" * 64}}


def make_trace(ops: dict[tuple[str, str], dict[str, tuple[int, int]]], *, env: dict[str, Any] | None = None,
               shapes: dict[tuple[str, str], list[int]] | None = None, workload: dict[str, Any] | None = None,
               ) -> dict[str, Any]:  # fmt: skip
    """A valid version-1-style trace (tensor FLOPs measured, the other metrics null): leaf tensor_flops = the sum
    of its ops' FLOPs; one call record per leaf with `shapes`."""
    stages = empty_stages(0)
    for parts in stages.values():
        for leaf in (v for k, v in parts.items() if k != "steps"):
            leaf.update({m: None for m in leaf if m not in ("tensor_flops", "calls")})
    breakdown: dict[str, Any] = {}
    calls = []
    for (stage, part), leaf_ops in ops.items():
        stages[stage][part]["tensor_flops"] = sum(f for f, _ in leaf_ops.values())
        stages[stage][part]["calls"] = 1
        breakdown.setdefault(stage, {})[part] = {
            op: {"flops": f, "calls": c, "family": "mm"} for op, (f, c) in leaf_ops.items()
        }
        shape = (shapes or {}).get((stage, part), [1, 7])
        calls.append(
            {"index": len(calls), "root": part, "module": f"model.{stage}", "stage": stage, "part": part, "step": 0,
             "input_shapes": [["arg0", shape]], "tensor_flops": stages[stage][part]["tensor_flops"],
             "ops": {op: f for op, (f, _) in leaf_ops.items()}}
        )  # fmt: skip
    total = sum(f for leaf_ops in ops.values() for f, _ in leaf_ops.values())
    w = workload or VisionWorkload.from_page(500, 700, "tiny", prompt_tokens=5, impl="hf").to_dict()
    trace = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "backend": "hf",
        "device": "cpu",
        "dtype": "float32",
        "vision_only": False,
        "complete": True,
        "workload": w,
        "received": {"decode_forwards": 0, "execution": {"mode": "shapes"}},
        "stages": stages,
        "totals": {"counter_total": total, "stage_sum": total, "audit_total": total, "unattributed": 0},
        "op_breakdown": breakdown,
        "calls": calls,
        "coverage": {"uncounted_ops": [], "ops_seen": {}, "custom_formulas": []},
        "environment": dict(env or ENV),
        "timing": {"wall_s": 0.1},
        "memory": {},
        "secondary": {},
        "incomplete_reasons": [],
        "measured_metrics": ["tensor_flops"],
    }
    validate_trace_dict(trace)
    return trace


A_OPS = {
    ("sam", "global"): {"aten.convolution.default": (500, 1)},
    ("prefill", "decoder"): {"aten.mm.default": (1000, 2), "aten.bmm.default": (300, 1)},
}
B_OPS = {
    ("sam", "global"): {"aten.convolution.default": (500, 1)},  # unchanged
    ("prefill", "decoder"): {"aten.mm.default": (1000, 4), "aten._grouped_mm.default": (200, 1)},  # bmm gone
}


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def run(*argv: Any) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_ops_appearing_disappearing_and_changing_calls(tmp_path):
    a = write(tmp_path, "a.json", make_trace(A_OPS, shapes={("prefill", "decoder"): [1, 7]}))
    b = write(tmp_path, "b.json", make_trace(B_OPS, shapes={("prefill", "decoder"): [1, 9]}))
    d = diff_sides(load_side(a, "A"), load_side(b, "B"))
    changed = d.metrics[d.metrics["changed"].astype(bool)]
    assert changed[["stage", "part", "metric", "a", "b", "delta", "gated"]].values.tolist() == [
        ["prefill", "decoder", "tensor_flops", 1300, 1200, -100, True]  # 1000 + 300 -> 1000 + 200
    ]
    ops = {r.op: r for r in d.ops.itertuples()}
    assert set(ops) == {"aten._grouped_mm.default", "aten.bmm.default", "aten.mm.default"}  # convolution: same
    assert (ops["aten._grouped_mm.default"].status, ops["aten._grouped_mm.default"].delta_flops) == ("appeared", 200)
    assert (ops["aten.bmm.default"].status, ops["aten.bmm.default"].delta_flops) == ("disappeared", -300)
    mm = ops["aten.mm.default"]
    assert (mm.status, mm.delta_flops, mm.calls_a, mm.calls_b, mm.fields) == ("changed", 0, 2, 4, ["calls"])
    assert ops["aten.bmm.default"].shapes_a == [
        {"module": "model.prefill", "input_shapes": [["arg0", [1, 7]]], "calls": 1}
    ]
    assert ops["aten.bmm.default"].shapes_b == []
    assert ops["aten._grouped_mm.default"].shapes_b[0]["input_shapes"] == [["arg0", [1, 9]]]
    assert d.exit_code == 1
    line = headline(d)
    assert line.startswith(
        "same environment (transformers 5.23.0, torch 2.13.0+cpu, cpu, float32, hf): "
        "stage prefill/decoder changed by -100 FLOPs"
    )
    assert "+aten._grouped_mm.default (new, 200 FLOPs)" in line and "-aten.bmm.default (gone, 300 FLOPs)" in line


def test_identical_traces_exit_0_and_say_no_change(tmp_path, capsys):
    a = write(tmp_path, "a.json", make_trace(A_OPS))
    assert run(a, a, "--quiet") == 0
    assert (
        capsys.readouterr().out.strip()
        == "SAME: same environment (transformers 5.23.0, torch 2.13.0+cpu, cpu, float32, hf): no change"
    )


def test_headline_names_the_library_change_and_the_code_hash(tmp_path, capsys):
    env_b = ENV | {"transformers": "5.24.0", "code_hashes": {"modeling.py": "b" * 64}}
    a = write(tmp_path, "a.json", make_trace(A_OPS))
    b = write(tmp_path, "b.json", make_trace(B_OPS, env=env_b))
    assert run(a, b, "--quiet") == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith(
        "DIFFERENT: transformers 5.23.0 -> 5.24.0, code:modeling.py aaaaaaaaaaaa… -> bbbbbbbbbbbb…: "
        "stage prefill/decoder changed by -100 FLOPs (tensor_flops; ops: "
    )


def test_metrics_are_read_from_the_leaves_not_a_fixed_list(tmp_path):
    """A metric the vendor starts measuring shows up (gated once listed in measured_metrics); so does any new field."""
    ta, tb = make_trace(A_OPS), make_trace(A_OPS)
    tb["stages"]["prefill"]["decoder"]["io_bytes"] = 4096  # A: null (not measured)
    ta["stages"]["sam"]["global"]["spill_flops"], tb["stages"]["sam"]["global"]["spill_flops"] = (
        10,
        12,
    )  # not in METRICS
    d = diff_sides(load_side(write(tmp_path, "a.json", ta)), load_side(write(tmp_path, "b.json", tb)))
    rows = d.metrics[d.metrics["changed"].astype(bool)][["stage", "part", "metric", "a", "b", "delta", "gated"]]
    assert rows.values.tolist() == [
        ["sam", "global", "spill_flops", 10, 12, 2, False],
        ["prefill", "decoder", "io_bytes", None, 4096, None, False],
    ]
    assert d.exit_code == 0  # nothing gated changed
    tb["measured_metrics"] = ["tensor_flops", "io_bytes"]  # then every leaf of B carries it
    for parts in tb["stages"].values():
        for leaf in (v for k, v in parts.items() if k != "steps"):
            leaf["io_bytes"] = leaf["io_bytes"] or 0
    d = diff_sides(load_side(write(tmp_path, "a.json", ta)), load_side(write(tmp_path, "b.json", tb)))
    assert set(d.gated_changes["metric"]) == {"io_bytes"} and d.exit_code == 1  # A never measured it


def run_doc(pages: list[tuple[str, dict[str, Any] | None, str | None]]) -> dict[str, Any]:
    """A minimal report.json: (page_id, trace or None, error)."""
    return {
        "report_format": 1,
        "command": "run_verify_end2end",
        "environment": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "code_hashes": {"vendor_shim": "c" * 64}},
        "pages": [
            {"page": {"page_id": pid}, "workload": (t or {}).get("workload"), "trace": t, "error": err}
            for pid, t, err in pages
        ],
    }


def test_pages_pair_by_id_then_by_workload_signature_and_the_rest_are_listed(tmp_path):
    wide = VisionWorkload.from_page(2000, 800, "gundam", prompt_tokens=5, impl="hf").to_dict()
    tall = VisionWorkload.from_page(800, 2000, "gundam", prompt_tokens=5, impl="hf").to_dict()
    small = VisionWorkload.from_page(300, 200, "gundam", prompt_tokens=5, impl="hf").to_dict()
    assert len({pairing_signature(w) for w in (wide, tall, small)}) == 3
    t = make_trace(A_OPS)
    a = run_doc([("p1", t, None), ("wide-a", make_trace(A_OPS, workload=wide), None),
                 ("tall", make_trace(A_OPS, workload=tall), None), ("gone", t, None)])  # fmt: skip
    b = run_doc([("p1", t, None), ("wide-b", make_trace(A_OPS, workload=wide), None),
                 ("tall", None, "vendor: out of memory"),
                 ("small", make_trace(A_OPS, workload=small), None)])  # fmt: skip
    # "gone" has p1's workload, but p1 is already paired by id: it stays unpaired
    d = diff_sides(load_side(write(tmp_path, "a.json", a)), load_side(write(tmp_path, "b.json", b)))
    assert [(p.key, p.paired_by) for p in d.pairs] == [
        ("p1", "page id"),
        ("tall", "page id"),
        ("wide-a ~ wide-b", "workload signature"),
    ]
    assert d.unpaired_a == ["gone"] and d.unpaired_b == ["small"]
    assert d.unmeasured == [{"pair": "tall", "side": "B", "error": "vendor: out of memory"}]
    assert d.gated_changes.empty and d.exit_code == 1  # nothing changed, but not every page was compared
    line = headline(d)
    assert "1 page only in A (gone)" in line and "1 page only in B (small)" in line
    assert "1 page without a trace on one side" in line


def test_coverage_change_is_a_difference(tmp_path):
    ta, tb = make_trace(A_OPS), make_trace(A_OPS)
    tb["coverage"]["uncounted_ops"], tb["complete"], tb["incomplete_reasons"] = ["aten.fused_op.default"], False, ["x"]
    d = diff_sides(load_side(write(tmp_path, "a.json", ta)), load_side(write(tmp_path, "b.json", tb)))
    assert d.coverage == [{"pair": "trace", "uncounted_a": [], "uncounted_b": ["aten.fused_op.default"]}]
    assert d.exit_code == 1 and "uncounted ops +aten.fused_op.default" in headline(d)


def test_out_writes_markdown_and_json_atomically(tmp_path, capsys):
    a = write(tmp_path, "a.json", make_trace(A_OPS))
    b = write(tmp_path, "b.json", make_trace(B_OPS))
    out = tmp_path / "diff" / "nested"
    assert run(a, b, "--out", out, "--json") == 1
    printed = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["diff.json", "diff.md"]  # no partial files left behind
    assert json.loads((out / "diff.json").read_text()) == printed
    assert printed["verdict"] == "different" and printed["exit_code"] == 1
    md = (out / "diff.md").read_text()
    assert md.splitlines()[2].startswith("**DIFFERENT** (exit 1): same environment")
    assert "| trace | prefill | decoder | aten.bmm.default | mm | disappeared | 300 | - | -300 | 1 | - |" in md


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda p: p / "missing.json", "does not exist: pass a run folder"),
        (lambda p: p, "no report.json in"),
        (lambda p: write(p, "bad.json", '{"pages": ['), "is not valid JSON (line 1, column 12): re-run"),
        (lambda p: write(p, "other.json", {"hello": 1}), "is neither a run report nor a vendor trace"),
        (lambda p: write(p, "deep.json", "[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (lambda p: write(p, "t.json", make_trace(A_OPS) | {"totals": {}}), "invalid vendor trace: totals"),
        (lambda p: write(p, "r.json", run_doc([]) | {"report_format": 99}), "report_format 99"),
        (lambda p: write(p, "r.json", run_doc([])), "has no pages: nothing to compare"),
        (  # format 2 with its decode-step tables damaged (reports.step_tables)
            lambda p: write(p, "r.json", run_doc([("p", None, "x")]) | {"report_format": 2, "step_tables": {}}),
            "step_tables must hold the lists analytic_steps, trace_steps, decode_calls: re-run",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_fix_and_exit_2(tmp_path, capsys, make, fix):
    good = write(tmp_path, "good.json", make_trace(A_OPS))
    bad_dir = tmp_path / "in"
    bad_dir.mkdir()
    bad = make(bad_dir)
    assert run(good, bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsocr-diff: error: B: ") and fix in err and "\n" not in err


def test_a_folder_of_several_runs_is_refused_naming_one(tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, "report.json", run_doc([("p", make_trace(A_OPS), None)]))
    with pytest.raises(DiffInputError, match=r"holds 2 runs: pass one of them, e.g. .*r2"):
        load_side(tmp_path)


def test_usage_errors_exit_2(capsys):
    assert run() == 2
    assert run("a", "b", "--json", "--quiet") == 2
    assert "dsocr-diff: error:" in capsys.readouterr().err


def first_pages(n: int) -> list[str]:
    return [p["id"] for p in json.loads((REPO / "datasets" / "embedded_pages.json").read_text())["pages"][:n]]


def test_two_run_folders(tmp_path, monkeypatch, capsys):
    """Vision-only runs on the meta device: bf16 on 2 pages vs float32 on 3. FLOP counts never depend on dtype;
    bytes do (every tensor doubles, and the float32 casts of a bf16 run vanish), and the diff says so."""
    from verify.cli import main_vision

    monkeypatch.setenv("DSOCR_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--quiet", "--no-cache", "--device", "meta"]
    assert main_vision([*common, "--limit", "2", "--dtype", "bfloat16", "--output-dir", str(tmp_path / "a")]) == 0
    assert main_vision([*common, "--limit", "3", "--dtype", "float32", "--output-dir", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    run_b = next((tmp_path / "b").iterdir())
    assert run(tmp_path / "a", run_b / "report.json", "--quiet") == 1  # an --output-dir with one run, a report.json
    out = capsys.readouterr().out.strip()
    third = first_pages(3)[2]
    assert out.startswith("DIFFERENT: dtype bfloat16 -> float32: stage sam/global changed by +")
    assert out.endswith(f"; 1 page only in B ({third})")
    d = diff_sides(load_side(tmp_path / "a"), load_side(run_b))
    assert [p.key for p in d.pairs] == first_pages(2) and d.unpaired_b == [third]
    changed = set(d.gated_changes["metric"])
    assert "io_bytes" in changed and not {"tensor_flops", "elementwise_flops"} & changed
    assert not d.ops["delta_flops"].any()  # ops changed their bytes (and casts their calls), never their FLOPs
    assert set(d.metrics["metric"]) >= {"tensor_flops"} and d.metrics["gated"].any()
    assert run(run_b, run_b, "--quiet") == 0  # a run against itself


def test_a_trace_pairs_with_the_run_page_of_its_workload(tmp_path):
    tall = VisionWorkload.from_page(800, 2000, "gundam", prompt_tokens=5, impl="hf").to_dict()
    run_a = run_doc([("p1", make_trace(A_OPS), None), ("tall", make_trace(A_OPS, workload=tall), None)])
    d = diff_sides(
        load_side(write(tmp_path, "a.json", run_a)),
        load_side(write(tmp_path, "b.json", make_trace(B_OPS, workload=tall))),
    )
    assert [(p.key, p.paired_by) for p in d.pairs] == [("tall ~ trace", "workload signature")]
    assert d.unpaired_a == ["p1"] and d.gated_changes["delta"].tolist() == [-100]
