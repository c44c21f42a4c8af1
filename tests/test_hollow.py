"""Shapes-only ("hollow") execution counts exactly what a real run counts, op by op.

The claim behind `--execution shapes`: the counted ops need shapes, not values, so answering
them with zeros of the right layout leaves every count unchanged.  Proven here by running
the same workload both ways and demanding equal per-op breakdowns (stage x part x aten op:
FLOPs and calls), on small modules, on a reduced-depth hf model and (in test_remote_code.py)
on the project's tiny official-code snapshot.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.workload import VisionWorkload
from vendor_shim.audit import AuditLog, AuditMode
from vendor_shim.backends.hf import HfBackend
from vendor_shim.cache import ModelCache
from vendor_shim.formulas import custom_mapping
from vendor_shim.hollow import HollowExecution
from vendor_shim.measure import measure


def _count(fn, execute=None):
    """(per-op FLOPs, per-op calls, output) of fn() under the counter + audit, optionally hollow."""
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
    log = AuditLog()
    charged: dict[str, int] = {}
    audit = AuditMode(
        counter.flop_registry,
        lambda n, m: charged.__setitem__(n, charged.get(n, 0) + m.vector[0]),
        log,
        execute=execute,
    )
    with torch.no_grad(), audit, counter:
        out = fn()
    calls = {n: st.calls for n, st in log.ops.items()}
    return charged, calls, out, int(counter.get_total_flops())


def _hollow():
    return HollowExecution(set(FlopCounterMode(custom_mapping=custom_mapping()).flop_registry))


def test_small_block_counts_equal_and_outputs_are_zero_with_real_layout():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x, img = torch.randn(2, 5, 16), torch.randn(1, 3, 6, 6)

    def block():
        h = lin(x)  # addmm on (10, 16) x (16, 24)
        q = h.view(2, 5, 2, 12).transpose(1, 2)  # (2, 2, 5, 12): the view needs the real strides
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return a, conv(img)

    real = _count(block)
    hollow_exec = _hollow()
    hollow = _count(block, hollow_exec)
    assert hollow[0] == real[0] and hollow[1] == real[1] and hollow[3] == real[3] > 0
    # Hand check of the total: addmm 2*10*16*24 = 7680; SDPA 4*B*H*Sq*Sk*D = 4*2*2*5*5*12 = 4800;
    # conv 2 * (8*6*6 outputs) * (3*3*3 taps) = 15552.
    assert real[3] == 7680 + 4800 + 15552
    for r, h in zip(real[2], hollow[2], strict=True):
        assert h.shape == r.shape and h.stride() == r.stride() and h.dtype == r.dtype
        assert not h.any()
    assert hollow_exec.stats.hollow_calls and not hollow_exec.stats.ran_for_real


def test_balanced_topk_hits_every_expert_evenly_and_keeps_going_across_calls():
    ex = _hollow()
    scores = torch.rand(10, 8)  # 10 tokens, 8 experts, top-3: 30 selections
    values, idx = ex(torch.ops.aten.topk.default, (scores, 3, -1), {})
    assert idx.shape == (10, 3)
    assert all(len(set(row.tolist())) == 3 for row in idx)  # distinct experts per token
    counts = torch.bincount(idx.flatten(), minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 30  # 30 / 8: 3 or 4 each
    assert torch.equal(values, scores.gather(-1, idx))
    # row r, slot j -> (r*3 + j) mod 8: token 0 -> 0,1,2; token 2 -> 6,7,0
    assert idx[0].tolist() == [0, 1, 2] and idx[2].tolist() == [6, 7, 0]
    _, nxt = ex(torch.ops.aten.topk.default, (torch.rand(1, 8), 3, -1), {})
    assert nxt[0].tolist() == [6, 7, 0]  # 30 selections so far: the next call starts at 30 mod 8 = 6
    assert ex.stats.topk_calls == 2 and ex.stats.topk_rows == 11


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(max_models=3)


def _breakdown(trace, metrics=("flops",)) -> dict:
    """(stage, part, op) -> (metrics..., calls) of the ops with tensor FLOPs (casts, copies and their bytes
    depend on the dtype and the routing; tensor FLOPs and their op list do not)."""
    return {
        (s, p, op): (*(c[m] for m in metrics), c["calls"])
        for s, parts in trace.op_breakdown.items()
        for p, ops in parts.items()
        for op, c in ops.items()
        if c["flops"]
    }


@pytest.mark.parametrize(
    ("mode", "width", "height", "scope"), [("tiny", 500, 700, "last"), ("gundam", 1300, 900, "all")]
)
def test_hf_reduced_depth_shapes_equals_real_op_by_op(mode, width, height, scope, models):
    """2 decoder layers (dense + MoE), float32 (fast on every CPU); gundam 1300x900 has a crop grid."""
    be = HfBackend(num_text_layers=2)
    w = VisionWorkload.from_page(
        width, height, mode, prompt_tokens=5, decode_tokens=3, impl="hf", lm_head_scope=scope, dtype="float32"
    )
    kw = {"backend": be, "device": "cpu", "model_cache": models, "fvcore": False, "vision_device": "meta"}
    real = measure(w, execution="real", **kw)
    shapes = measure(w, execution="shapes", **kw)
    assert real.complete and shapes.complete
    assert real.received["execution"] == {"mode": "real"}
    ex = shapes.received["execution"]
    assert ex["mode"] == "shapes" and not ex["ran_for_real"]
    assert ex["hollow_ops"]["aten._grouped_mm.default"] > 0
    # one MoE layer: one top-k per forward (prefill + 3 decode steps), over prefill_len + 3 rows in all
    assert ex["topk_calls"] == 4 and ex["topk_rows"] == w.prefill_len + 3
    assert _breakdown(shapes) == _breakdown(real)
    assert shapes.totals == real.totals
    # every metric equal, except the weights the prefill's experts read: the random router of the real run
    # hits fewer experts than the balanced one (both recorded); one expert = 3 x 1280 x 896 float32 weights
    routing = {"weight_bytes", "io_bytes"}
    for stage, parts in real.stages.items():
        for part, leaf in parts.items():
            if part == "steps":
                continue
            for m, v in leaf.items():
                if not (stage == "prefill" and part == "decoder" and m in routing):
                    assert shapes.stages[stage][part][m] == v, (stage, part, m)
    hit_real = real.received["routing"]["prefill_experts_hit"]
    hit_shapes = shapes.received["routing"]["prefill_experts_hit"]
    assert hit_shapes == [min(64, 6 * w.prefill_len)] and len(hit_real) == 1
    expert = 3 * 1280 * 896 * 4
    gap = shapes.stages["prefill"]["decoder"]["weight_bytes"] - real.stages["prefill"]["decoder"]["weight_bytes"]
    assert gap == (hit_shapes[0] - hit_real[0]) * expert


def test_dtype_does_not_change_counts_in_shapes_mode(models):
    be = HfBackend(num_text_layers=2)
    traces = [
        measure(
            VisionWorkload.from_page(500, 700, "tiny", prompt_tokens=5, decode_tokens=2, impl="hf", dtype=dt),
            backend=be,
            device="cpu",
            model_cache=models,
            fvcore=False,
            vision_device="meta",
            execution="shapes",
        )
        for dt in ("float32", "bfloat16")
    ]
    assert _breakdown(traces[0]) == _breakdown(traces[1])
    assert traces[0].dtype == "float32" and traces[1].dtype == "bfloat16"


def test_meta_memo_keeps_views_by_behaviour_on_their_storage():
    """A 3-D matmul ends in ``_unsafe_view`` (schema: a new tensor; kernel: a view).  Answered from the meta layout
    memo with a fresh tensor, it would leave its storage for dead while the view still holds it, and the live-bytes
    book (peak_bytes) would lose the matmul's output.  Seen twice with the same geometry (the memo's second answer),
    the view must still share the matmul output's storage; a truly functional op keeps using the memo."""
    hollow_exec = _hollow()
    a = torch.empty(2, 3, 5, device="meta")
    w = torch.empty(5, 7, device="meta")
    memo_hits = []
    for _ in range(2):
        mm = hollow_exec(torch.ops.aten.mm.default, (a.view(6, 5), w), {})
        out = hollow_exec(torch.ops.aten._unsafe_view.default, (mm, [2, 3, 7]), {})
        assert out.untyped_storage()._cdata == mm.untyped_storage()._cdata
        assert tuple(out.shape) == (2, 3, 7)
        memo_hits.append(hollow_exec.stats.meta_memo_hits)
    assert memo_hits == [0, 1]  # the mm's second call came from the memo; the views never do
