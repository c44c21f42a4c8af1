"""Measured metrics of single ops and small modules, every expected byte derived by hand (float32: 4 bytes)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.metrics import OP_METRICS, TRAFFIC, op_metrics
from vendor_shim.audit import AuditLog, AuditMode
from vendor_shim.formulas import custom_mapping
from vendor_shim.op_meter import FusedAttention, OpMeter, footprint

# the cells below are metric vectors (OP_METRICS order), made from the meter's traffic vectors
NAMES = ("tensor_flops", "elementwise_flops", "io_bytes", "weight_bytes", "activation_bytes")
TENSOR, ELEMENTWISE, IO, WEIGHT, ACTIVATION = (OP_METRICS.index(m) for m in NAMES)


def _as_metrics(ops: dict[str, list[int]]) -> dict[str, list[int]]:
    """op -> its metric vector, from the traffic vector the meter charged (core.metrics)."""
    return {name: list(op_metrics(dict(zip(TRAFFIC, cell, strict=True))).values()) for name, cell in ops.items()}


def _meter(fn, module: torch.nn.Module | None = None, meter: OpMeter | None = None):
    """Per-op vectors of fn() under the counter, the audit and the meter (weights = the module's tensors)."""
    weights = frozenset(t.untyped_storage()._cdata for t in (*module.parameters(), *module.buffers())) if module else ()
    meter = meter or OpMeter(weights=frozenset(weights))
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
    ops: dict[str, list[int]] = {}

    def charge(name, measured):
        cell = ops.setdefault(name, [0] * len(measured.vector))
        for i, v in enumerate(measured.vector):
            cell[i] += v

    audit = AuditMode(counter.flop_registry, charge, AuditLog(), meter)
    with torch.no_grad(), FusedAttention(meter, charge), audit, counter:
        out = fn()
    return _as_metrics(ops), meter, out


def test_one_linear_reads_input_weight_bias_and_writes_its_output():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    ops, _, _ = _meter(lambda: lin(x), lin)
    addmm = ops["aten.addmm.default"]
    # reads: x 2*4*4 = 32, weight^T 3*4*4 = 48 (a view of the parameter: `t` moves nothing), bias 3*4 = 12;
    # writes the output 2*3*4 = 24
    assert addmm[IO] == 32 + 48 + 12 + 24 == 116
    assert addmm[WEIGHT] == 48 + 12 and addmm[ACTIVATION] == 24
    assert addmm[TENSOR] == 2 * 2 * 4 * 3  # 2 FLOPs per multiply-add
    assert addmm[ELEMENTWISE] == 2 * 3  # the fused bias add, one per output element
    assert ops["aten.t.default"] == [0] * len(addmm)  # a view: no traffic, no work


def test_gather_reads_the_rows_it_writes_not_the_table():
    emb = torch.nn.Embedding(1000, 8)
    ids = torch.tensor([[3, 3, 7]])
    ops, _, _ = _meter(lambda: emb(ids), emb)
    e = ops["aten.embedding.default"]
    # 3 rows x 8 x 4 = 96 bytes gathered from the table (the table is 1000 x 8 x 4 = 32,000), ids 3 x 8 = 24
    # (int64), output 96
    assert e[WEIGHT] == 96 and e[IO] == 96 + 24 + 96 and e[ACTIVATION] == 96


def test_in_place_add_reads_and_writes_its_destination_copy_into_a_slice_only_writes():
    a, b = torch.zeros(10), torch.ones(10)
    cache = torch.zeros(4, 10)

    def fn():
        a.add_(b)  # reads a 40 + b 40, writes a 40
        cache[1].copy_(b)  # overwrites one row: reads b 40, writes 40 (the slice), never reads the row first

    ops, _, _ = _meter(fn)
    assert ops["aten.add_.Tensor"][IO] == 120 and ops["aten.add_.Tensor"][ACTIVATION] == 40
    assert ops["aten.add_.Tensor"][ELEMENTWISE] == 10
    assert ops["aten.copy_.default"][IO] == 80 and ops["aten.copy_.default"][ELEMENTWISE] == 0
    assert ops["aten.select.int"][IO] == 0  # the row is a view


def test_broadcast_operand_is_read_once():
    x, bias = torch.randn(5, 6), torch.randn(6)
    ops, _, _ = _meter(lambda: x + bias.expand(5, 6))
    # x 5*6*4 = 120, the expanded bias has stride 0 on its first dim: 6*4 = 24, output 120
    assert footprint(bias.expand(5, 6)) == 24
    assert ops["aten.add.Tensor"][IO] == 120 + 24 + 120


def test_fused_attention_is_one_op_on_every_device():
    q = torch.randn(1, 2, 5, 4)
    k, v = torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    per_device = {}
    for device in ("cpu", "meta"):
        qd, kd, vd = (t.to(device) for t in (q, k, v))
        ops, _, _ = _meter(lambda qd=qd, kd=kd, vd=vd: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd))
        fused = ops["fused.scaled_dot_product_attention"]
        # reads q 1*2*5*4*4 = 160, k 224, v 224; writes out 160; softmax 5 per score (2*5*7 scores), no mask
        assert fused[IO] == 160 + 224 + 224 + 160 and fused[ELEMENTWISE] == 5 * 2 * 5 * 7
        # the kernel's internals (CPU flash op, or bmm/softmax on meta) carry tensor FLOPs only
        inner = [cell for name, cell in ops.items() if name != "fused.scaled_dot_product_attention"]
        assert all(cell[IO] == 0 and cell[ELEMENTWISE] == 0 for cell in inner)
        per_device[device] = (sum(cell[TENSOR] for cell in ops.values()), fused)
    assert per_device["cpu"] == per_device["meta"]  # 4 * B * H * Sq * Sk * D = 4*1*2*5*7*4 = 1,120 both ways
    assert per_device["cpu"][0] == 1120


def test_peak_is_the_high_water_mark_of_live_bytes_above_the_entry_level():
    class Frame:  # what a stage frame offers the storage book
        peak_live = 0

    frame = Frame()
    meter = OpMeter(weights=frozenset())
    meter.book.watchers.append(frame)

    def fn():
        a = torch.ones(1000)  # 4,000 bytes live
        b = a * 2  # 8,000
        del a  # 4,000: the storage died, its finalizer ran
        c = b + 1  # 8,000 again
        return c.sum()  # + the 4-byte scalar while b and c live: 8,004

    _meter(fn, meter=meter)
    assert frame.peak_live == 8004
    assert meter.book.live_bytes == 0  # everything the run allocated is gone again


def test_a_nested_stage_raises_its_own_peak_not_its_parents():
    class Frame:
        peak_live = 0

    outer, inner = Frame(), Frame()
    meter = OpMeter(weights=frozenset())

    def fn():
        a = torch.ones(100)  # 400 bytes in the outer stage
        meter.book.watchers.append(inner)  # the nested stage starts (the official vision stack in the decoder)
        b = torch.ones(1000)  # 4,000 more while the nested stage runs
        kept = b[:10].clone()  # 40 it leaves behind
        del b
        meter.book.watchers.pop()
        return a + kept.sum()  # back in the outer stage: 400 + 40 + the 4-byte sum + 400

    meter.book.watchers.append(outer)
    _meter(fn, meter=meter)
    assert inner.peak_live == 4440  # 400 (the outer's a) + 4,000 + 40
    assert outer.peak_live == 400 + 40 + 4 + 400


def test_index_put_writes_every_element_its_indices_address():
    """``mask[rows[:, None], rows] = 0.0`` (DeepSeek-OCR 2's official encoder mask) writes len(rows)^2 elements from
    one broadcast value; ``x[idx] = values`` writes the values' rows."""
    mask = torch.full((6, 6), -1.0)
    x = torch.zeros(5, 3)
    rows = torch.tensor([0, 2, 4])

    def fn():
        mask[rows[:, None], rows] = 0.0  # 3 x 3 = 9 elements x 4 bytes = 36 written
        x[torch.tensor([1, 3])] = torch.ones(2, 3)  # 2 rows x 3 x 4 = 24 written

    ops, _, _ = _meter(fn)
    put = ops["aten.index_put_.default"]
    # writes 36 + 24 = 60; reads (never the destination: an overwrite): the first call's two index tensors (3 int64
    # each: 24 + 24) and its value (a 0-d float32: 4), the second's index (2 int64: 16) and values (2 x 3 x 4 = 24)
    assert put[ACTIVATION] == 36 + 24
    assert put[IO] == 60 + (24 + 24 + 4) + (16 + 24)
    assert torch.equal(mask[rows[:, None], rows], torch.zeros(3, 3))


FLASH_ATTN_SCHEMA = (  # flash-attn 2.7's flash_attn::_flash_attn_forward
    "_flash_attn_forward(Tensor q, Tensor k, Tensor v, float dropout_p, float softmax_scale, bool causal, "
    "int window_size_left, int window_size_right, float softcap, Tensor? alibi_slopes, bool return_softmax) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)


def _flash_attn_stand_in(q, k, v, dropout_p, softmax_scale, causal, wl, wr, softcap, alibi, return_softmax):
    """A CPU stand-in for the CUDA-only kernel: (B, S, H, D) in, (out, softmax_lse, S_dmask, rng_state) out.  Plain
    matmuls inside: a kernel's internals run below the dispatch modes, as the CUDA kernel's would."""
    scores = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1)) * softmax_scale
    out = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).contiguous()
    lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
    return out, lse, torch.empty(0), torch.zeros(2, dtype=torch.int64)


def test_a_flash_attn_kernel_called_directly_is_counted_and_charged_as_the_fused_op():
    """transformers' flash_attention_2 calls flash-attn's custom op, not F.scaled_dot_product_attention: it gets
    the same FLOPs and the same elementwise/byte charges as the fused op (docs/metrics.md, "The metrics")."""
    from vendor_shim.audit import AuditLog

    with torch.library._scoped_library("flash_attn", "FRAGMENT") as lib:  # removed again when the test ends
        lib.define(FLASH_ATTN_SCHEMA)
        lib.impl("_flash_attn_forward", _flash_attn_stand_in, "CPU")
        q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8)  # (B, S, H, D)
        log = AuditLog()
        meter = OpMeter(weights=frozenset())
        counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
        ops: dict[str, list[int]] = {}

        def charge(name, measured):
            cell = ops.setdefault(name, [0] * len(measured.vector))
            for i, x in enumerate(measured.vector):
                cell[i] += x

        audit = AuditMode(counter.flop_registry, charge, log, meter)
        with torch.no_grad(), FusedAttention(meter, charge), audit, counter:
            torch.ops.flash_attn._flash_attn_forward(q, k, v, 0.0, 8**-0.5, True, -1, -1, 0.0, None, False)
        ops = _as_metrics(ops)
        cell = ops["flash_attn._flash_attn_forward.default"]
        assert log.ops["flash_attn._flash_attn_forward.default"].klass == "counted"
        assert cell[TENSOR] == counter.get_total_flops() == 4 * 1 * 2 * 5 * 7 * 8 == 2240  # 4 B H Sq Sk D
        # scores 1*2*5*7 = 70: softmax 5 + causal mask 1 per score
        assert cell[ELEMENTWISE] == (5 + 1) * 70 == 420
        # reads q 1*5*2*8*4 = 320, k and v 1*7*2*8*4 = 448 each; writes out 320 (not the logsumexp/RNG outputs)
        assert cell[IO] == 320 + 448 + 448 + 320 and cell[ACTIVATION] == 320 and cell[WEIGHT] == 0
        assert list(ops) == ["flash_attn._flash_attn_forward.default"]  # the kernel's internals are not seen


def test_a_kernel_called_directly_costs_what_sdpa_costs_for_the_same_problem():
    """The CPU flash kernel called by name vs through F.scaled_dot_product_attention: one figure per metric."""
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    mask = torch.zeros(1, 2, 5, 7)
    direct, _, _ = _meter(lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask))
    fused, _, _ = _meter(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    d = direct["aten._scaled_dot_product_flash_attention_for_cpu.default"]
    f = fused["fused.scaled_dot_product_attention"]
    # q 160 + k 224 + v 224 + mask 1*2*5*7*4 = 280 read, out 160 written; (5 + 1) per score x 70 scores
    assert d[IO] == f[IO] == 160 + 224 + 224 + 280 + 160
    assert d[ELEMENTWISE] == f[ELEMENTWISE] == 6 * 70
    assert d[TENSOR] == sum(c[TENSOR] for c in fused.values()) == 4 * 1 * 2 * 5 * 7 * 4 == 1120
