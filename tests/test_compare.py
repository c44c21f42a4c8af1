"""Comparator semantics: tolerances, zero handling, gap family, received-workload check."""

import math

import pytest

from core.metrics import METRICS
from core.schema import leaf_paths
from verify.compare import (
    ToleranceError,
    Tolerances,
    compare_stages,
    gap_family,
    parse_tolerances,
    received_mismatches,
    relative_delta,
)


def _stages(value_by_leaf):
    out = {}
    for stage, part in leaf_paths(("sam", "clip", "projector")):
        leaf = dict.fromkeys(METRICS, 0)
        leaf["tensor_flops"] = value_by_leaf.get((stage, part), 0)
        out.setdefault(stage, {})[part] = leaf
    return out


def test_relative_delta_edges():
    assert relative_delta(0, 0) == 0.0
    assert math.isinf(relative_delta(0, 5))
    # |101 - 100| / 100 = 0.01
    assert relative_delta(100, 101) == pytest.approx(0.01)


def test_rows_gate_only_tensor_flops_and_zero_rules():
    vendor = _stages({("sam", "global"): 1000, ("sam", "crops"): 0, ("clip", "global"): 500})
    analytic = _stages({("sam", "global"): 1005, ("sam", "crops"): 0, ("clip", "global"): 0})
    rows = compare_stages("p", vendor, analytic, Tolerances(), ("sam", "clip", "projector"))
    gated = {(r.stage, r.part): r for r in rows if r.metric == "tensor_flops"}
    # 1005 vs 1000 -> 0.5% <= 1%: pass
    assert gated[("sam", "global")].passed and gated[("sam", "global")].rel_delta == pytest.approx(0.005)
    # zero on both sides passes
    assert gated[("sam", "crops")].passed
    # zero on one side only fails, whatever the tolerance
    assert gated[("clip", "global")].passed is False
    assert gated[("clip", "global")].note == "zero on one side only"
    ungated = [r for r in rows if r.metric != "tensor_flops"]  # measured (0 here) but not in `gated`
    assert ungated and all(r.passed is None and r.tolerance is None and r.vendor == 0 for r in ungated)
    # one row per leaf x metric: 6 leaves x 7 metrics
    assert len(rows) == 6 * len(METRICS) == 42


def test_gated_byte_metric_uses_its_own_tolerance_and_names_the_vendor_ops():
    vendor = _stages({("sam", "global"): 100})
    analytic = _stages({("sam", "global"): 100})
    vendor["sam"]["global"]["io_bytes"] = 1000
    analytic["sam"]["global"]["io_bytes"] = 1040  # 4% <= the 5% byte default
    vendor["sam"]["global"]["activation_bytes"] = 1000
    analytic["sam"]["global"]["activation_bytes"] = 900  # 10% > 5%
    ops = {"sam": {"global": {"aten.clone.default": {"flops": 0, "activation_bytes": 70}}}}
    rows = compare_stages(
        "p",
        vendor,
        analytic,
        Tolerances(),
        ("sam",),
        gated=("tensor_flops", "io_bytes", "activation_bytes"),
        vendor_ops=ops,
    )
    by = {(r.part, r.metric): r for r in rows}
    assert by[("global", "io_bytes")].passed and by[("global", "io_bytes")].tolerance == 0.05
    bad = by[("global", "activation_bytes")]
    assert bad.passed is False and bad.note == "vendor ops: aten.clone 70"
    assert by[("global", "peak_bytes")].tolerance is None  # not gated: reported


def test_metric_tolerance_overrides_most_specific_first():
    tol = parse_tolerances(0.01, ["io_bytes=0.1", "sam.io_bytes=2%", "decode=0.03"])
    assert tol.for_leaf("sam", "io_bytes") == pytest.approx(0.02)
    assert tol.for_leaf("clip", "io_bytes") == pytest.approx(0.1)
    assert tol.for_leaf("decode", "peak_bytes") == pytest.approx(0.03)  # the stage-wide override
    assert tol.for_leaf("clip", "peak_bytes") == 0.10 and tol.for_leaf("clip", "elementwise_flops") == 0.02
    with pytest.raises(ToleranceError):
        parse_tolerances(0.01, ["sam.no_such_metric=0.1"])


def test_gap_family_names_largest_difference():
    assert gap_family({"mm": 100, "bmm": 50}, {"mm": 100, "bmm": 10}) == "bmm"
    assert gap_family({"mm": 1}, {"mm": 1}) is None


def test_failing_row_carries_gap_family():
    vendor = _stages({("sam", "global"): 200})
    analytic = _stages({("sam", "global"): 100})
    fams_v = {"sam": {"global": {"mm": 100, "sdpa": 100}}}
    fams_a = {"sam": {"global": {"mm": 100}}}
    rows = compare_stages("p", vendor, analytic, Tolerances(), ("sam",), fams_v, fams_a)
    bad = [r for r in rows if r.passed is False]
    assert len(bad) == 1 and bad[0].gap_family == "sdpa"


def test_tolerance_parsing_and_bounds():
    tol = parse_tolerances(0.01, ["sam=0.02", "decode=3%"])
    flops = "tensor_flops"
    assert tol.for_leaf("sam", flops) == 0.02 and tol.for_leaf("decode", flops) == pytest.approx(0.03)
    assert tol.for_leaf("clip", flops) == 0.01
    with pytest.raises(ToleranceError):
        parse_tolerances(0.01, ["nosuchstage=0.01"])
    with pytest.raises(ToleranceError):
        parse_tolerances(0.01, ["sam=0.5"])  # above the 25% ceiling
    with pytest.raises(ToleranceError):
        parse_tolerances(0.01, ["sam=abc"])


def test_received_mismatch_reported():
    wl = {"w_crop": 2, "h_crop": 3, "n_image_tokens": 903}
    assert received_mismatches(wl, {"w_crop": 2, "h_crop": 3, "n_image_tokens": 903}) == []
    assert received_mismatches(wl, {"w_crop": 3, "h_crop": 2}) == [
        "w_crop: workload 2 vs vendor 3",
        "h_crop: workload 3 vs vendor 2",
    ]
