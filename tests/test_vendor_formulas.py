"""FLOP formulas the shim relies on, checked against hand-derived values on small shapes.

Convention: 2 FLOPs per multiply-add; attention = QK^T + AV over the full Sq x Sk product,
i.e. 4*B*H*Sq*Sk*D when Dqk == Dv.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vendor_shim.audit import AuditLog, AuditMode, classify
from vendor_shim.errors import UncountableOpError
from vendor_shim.formulas import custom_mapping

aten = torch.ops.aten


def count(fn):
    """(counter total, audit total, {op: class}) with the shim's formulas, audit under the counter."""
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
    log = AuditLog()
    with AuditMode(counter.flop_registry, lambda *_: None, log), counter:
        fn()
    return counter.get_total_flops(), log.total_flops, {k: v.klass for k, v in log.ops.items()}


def attn(b, h, sq, sk, d):
    return 4 * b * h * sq * sk * d


def test_sdpa_on_cpu_uses_flash_for_cpu_and_is_fully_counted():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    total, audit, ops = count(lambda: F.scaled_dot_product_attention(q, k, v))
    assert total == audit == attn(2, 3, 5, 7, 8) == 6720  # 4*2*3*5*7*8
    assert ops["aten._scaled_dot_product_flash_attention_for_cpu.default"] == "counted"


def test_sdpa_cpu_with_float_mask_like_sam():
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    mask = torch.randn(1, 2, 6, 6)
    total, _, ops = count(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert total == attn(1, 2, 6, 6, 4) == 1152  # 4*1*2*6*6*4; the mask add is elementwise
    assert not [o for o, c in ops.items() if c == "uncounted"]


def test_sdpa_cpu_grouped_query_attention_counts_query_heads():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    total, _, _ = count(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert total == attn(2, 4, 5, 7, 8) == 8960  # KV heads are broadcast to the 4 query heads


def test_sdpa_math_path_and_meta_path_agree():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    with sdpa_kernel(SDPBackend.MATH):
        math_total, _, math_ops = count(lambda: F.scaled_dot_product_attention(q, k, v))
    meta_total, _, _ = count(lambda: F.scaled_dot_product_attention(q.to("meta"), k.to("meta"), v.to("meta")))
    assert math_total == meta_total == attn(2, 3, 5, 7, 8)
    assert math_ops["aten.bmm.default"] == "counted"  # the math path decomposes into two bmm


@pytest.mark.parametrize(
    "op, layout",
    [
        (aten._scaled_dot_product_efficient_attention, "bhsd"),
        (aten._scaled_dot_product_flash_attention, "bhsd"),
        (aten._scaled_dot_product_cudnn_attention, "bhsd"),
        (aten._scaled_dot_product_flash_attention_for_cpu, "bhsd"),
        (aten._flash_attention_forward, "bshd"),
        (aten._efficient_attention_forward, "bshd"),
    ],
)
def test_every_attention_kernel_formula_is_4bhsqskd(op, layout):
    """The kernels CUDA may pick, evaluated on meta tensors in each kernel's own layout."""
    b, h, sq, sk, d = 2, 4, 5, 7, 16
    shape = (lambda s: (b, h, s, d)) if layout == "bhsd" else (lambda s: (b, s, h, d))
    q, k, v = (torch.empty(shape(s), device="meta") for s in (sq, sk, sk))
    formula = FlopCounterMode(display=False, custom_mapping=custom_mapping()).flop_registry[op]
    if op is aten._flash_attention_forward:  # (q, k, v, cum_seq_q, cum_seq_k, max_q, max_k, dropout, causal, ...)
        got = formula(q, k, v, None, None, sq, sk, 0.0, False, False, out_val=None)
    elif op is aten._efficient_attention_forward:  # (q, k, v, bias, cu_q, cu_k, max_q, max_k, dropout, mask type)
        got = formula(q, k, v, None, None, None, sq, sk, 0.0, 0, out_val=None)
    else:
        got = formula(q, k, v, out_val=None)
    assert got == attn(b, h, sq, sk, d) == 17920  # 4*2*4*5*7*16


def test_torch_builtin_bshd_kernel_formulas_misread_the_layout():
    """Why the shim replaces them: torch 2.13 reads dense (B, S, H, D) as (B, H, S, D)."""
    from torch.utils.flop_counter import flop_registry

    b, h, s, d = 1, 2, 6, 4
    q = k = v = torch.empty(b, s, h, d, device="meta")
    builtin = flop_registry[aten._flash_attention_forward](q, k, v, None, None, s, s, 0.0, False, False, out_val=None)
    assert builtin == 4 * b * s * h * h * d != attn(b, h, s, s, d)  # heads and sequence swapped


def test_grouped_mm_2d_3d_with_offsets():
    a, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    offs = torch.tensor([3, 7, 10], dtype=torch.int32)  # groups of 3, 4 and 3 rows
    total, audit, ops = count(lambda: torch._grouped_mm(a, w, offs=offs))
    assert total == audit == 2 * (3 + 4 + 3) * 8 * 4 == 640
    assert ops["aten._grouped_mm.default"] == "counted"


def test_grouped_mm_counts_only_rows_inside_offsets():
    a, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    offs = torch.tensor([3, 7, 8], dtype=torch.int32)  # rows 8..9 belong to no group
    assert count(lambda: torch._grouped_mm(a, w, offs=offs))[0] == 2 * 8 * 8 * 4 == 512


def test_grouped_mm_transposed_weights_like_transformers_experts():
    a = torch.randn(10, 8)
    w = torch.randn(3, 4, 8).transpose(-2, -1)  # experts stored (E, N, K), used as (E, K, N)
    offs = torch.tensor([3, 7, 10], dtype=torch.int32)
    assert count(lambda: torch._grouped_mm(a, w, offs=offs))[0] == 2 * 10 * 8 * 4


def test_grouped_mm_batched_3d_3d():
    assert count(lambda: torch._grouped_mm(torch.randn(3, 5, 8), torch.randn(3, 8, 4)))[0] == 2 * 3 * 5 * 8 * 4


def test_transformers_grouped_mm_fallback_custom_op_is_counted():
    pytest.importorskip("transformers.integrations.moe")  # defines transformers::grouped_mm_fallback
    a, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    offs = torch.tensor([3, 7, 10], dtype=torch.int32)
    total, _, ops = count(lambda: torch.ops.transformers.grouped_mm_fallback(a, w, offs))
    assert total == 2 * 10 * 8 * 4  # same as _grouped_mm: 2 * sum(M_g) * K * N
    assert ops["transformers.grouped_mm_fallback.default"] == "counted"


def test_grouped_mm_on_meta_refuses_to_guess():
    a, w = torch.empty(10, 8, device="meta"), torch.empty(3, 8, 4, device="meta")
    offs = torch.empty(3, dtype=torch.int32, device="meta")
    formula = custom_mapping()[aten._grouped_mm]
    with pytest.raises(UncountableOpError, match="meta"):
        formula(a, w, offs)


def test_matmul_like_op_without_formula_is_flagged():
    _, _, ops = count(lambda: torch.addmv(torch.randn(3), torch.randn(3, 4), torch.randn(4)))
    assert ops["aten.addmv.default"] == "uncounted"


def test_classify_rules():
    assert classify(aten.add.Tensor, False, True) == "allowed:elementwise"
    assert classify(aten.mm.default, True, True) == "counted"
    assert classify(aten.arange.default, False, False) == "non_float"
    assert classify(aten._grouped_mm.default, False, True) == "uncounted"  # suspicious name, no formula
    assert classify(aten.upsample_linear1d.default, False, True) == "allowed:interpolation"


# ---- attention kernels a CUDA run meets (vendor_shim.attention_kernels), evaluated on CPU/meta tensors ----


def _kernel_formula(namespace, name):
    from vendor_shim.attention_kernels import KERNELS, attention_flop_formula

    return attention_flop_formula(KERNELS[(namespace, name)])


def test_bshd_kernels_with_different_lengths_and_grouped_heads():
    """Sq != Sk and 4 query heads over 2 KV heads, in (B, S, H, D): torch's own formula asserts here."""
    from torch.utils.flop_counter import flop_registry

    b, s_q, s_k, h, h_kv, d = 2, 3, 5, 4, 2, 8
    q, k, v = torch.empty(b, s_q, h, d, device="meta"), *(torch.empty(b, s_k, h_kv, d, device="meta"),) * 2
    want = 4 * b * h * s_q * s_k * d  # 4*2*4*3*5*8 = 3840: KV heads broadcast to the query heads
    assert want == 3840
    flash = _kernel_formula("aten", "_flash_attention_forward")(q, k, v, None, None, s_q, s_k, 0.0, True, False)
    eff = _kernel_formula("aten", "_efficient_attention_forward")(q, k, v, None, None, None, s_q, s_k, 0.0, 1)
    fa = _kernel_formula("flash_attn", "_flash_attn_forward")(q, k, v, 0.0, 0.35, True, -1, -1, 0.0, None, False)
    assert flash == eff == fa == want
    with pytest.raises(AssertionError):  # reads (B, S, H, D) as (B, H, S, D): "heads" 3 vs 5 do not divide
        flop_registry[aten._flash_attention_forward](q, k, v, None, None, s_q, s_k, 0.0, True, False, out_val=None)


def test_value_head_dim_may_differ_from_the_query_key_dim():
    q, k, v = torch.empty(1, 2, 3, 8), torch.empty(1, 2, 5, 8), torch.empty(1, 2, 5, 4)
    got = _kernel_formula("aten", "_scaled_dot_product_efficient_attention")(q, k, v, None, False)
    assert got == 2 * 2 * 3 * 5 * 8 + 2 * 2 * 3 * 5 * 4 == 720  # QK^T over Dqk 8, then PV over Dv 4


@pytest.mark.parametrize(
    "op",
    [
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention,
    ],
)
def test_sdpa_level_cuda_kernels_agree_with_torchs_own_formula(op):
    """The SDPA-level CUDA ops take (B, H, S, D) as torch's built-in formula reads them: two independent paths."""
    from torch.utils.flop_counter import flop_registry

    q, k, v = torch.empty(2, 4, 5, 16, device="meta"), *(torch.empty(2, 2, 7, 16, device="meta"),) * 2
    ours = FlopCounterMode(display=False, custom_mapping=custom_mapping()).flop_registry[op]
    extra = () if op is aten._scaled_dot_product_flash_attention else (None, False)
    assert ours(q, k, v, *extra, out_val=None) == flop_registry[op](q, k, v, *extra, out_val=None)
    assert ours(q, k, v, *extra, out_val=None) == 4 * 2 * 4 * 5 * 7 * 16 == 17920


# Two packed sequences: queries 0..3 and 3..7 (3 and 4), keys 0..5 and 5..7 (5 and 2); 2 heads of 8.
_CU_Q, _CU_K = [0, 3, 7], [0, 5, 7]
_VARLEN = 4 * 2 * 8 * (3 * 5 + 4 * 2)  # sum_i 4 H s_q,i s_k,i D = 64 * 23 = 1472 (causal counted full)


def _packed(device="cpu", lead=()):
    q = torch.empty(*lead, 7, 2, 8, device=device)
    k = v = torch.empty(*lead, 7, 2, 8, device=device)
    cu_q, cu_k = (torch.tensor(c, dtype=torch.int32, device=device) for c in (_CU_Q, _CU_K))
    return q, k, v, cu_q, cu_k


def test_flash_attn_varlen_forward_sums_over_the_sequences():
    q, k, v, cu_q, cu_k = _packed()
    formula = _kernel_formula("flash_attn", "_flash_attn_varlen_forward")
    assert _VARLEN == 1472
    assert formula(q, k, v, cu_q, cu_k, 4, 5, 0.0, 0.35, True) == _VARLEN
    assert _kernel_formula("flashattn", "_flash_attn_varlen_forward")(q, k, v, cu_q, cu_k, 4, 5, 0.0, 0.35, True) == (
        _VARLEN
    )
    # seqused_k: only 4 and 1 of the keys are used -> 64 * (3*4 + 4*1) = 1024
    used = torch.tensor([4, 1], dtype=torch.int32)
    assert formula(q, k, v, cu_q, cu_k, 4, 5, 0.0, 0.35, True, seqused_k=used) == 64 * (3 * 4 + 4 * 1) == 1024


def test_aten_kernels_with_cumulative_lengths_agree_with_torchs_nested_formula():
    """torch's nested-input formulas unpack the same lengths from real offsets: an independent path."""
    from torch.utils.flop_counter import flop_registry

    q, k, v, cu_q, cu_k = _packed()
    ours = _kernel_formula("aten", "_flash_attention_forward")(q, k, v, cu_q, cu_k, 4, 5, 0.0, True, False)
    theirs = flop_registry[aten._flash_attention_forward](q, k, v, cu_q, cu_k, 4, 5, 0.0, True, False, out_val=None)
    assert ours == theirs == _VARLEN
    q4, k4, v4, cu_q, cu_k = _packed(lead=(1,))  # efficient attention packs as (1, total, H, D)
    eff = _kernel_formula("aten", "_efficient_attention_forward")(q4, k4, v4, None, cu_q, cu_k, 4, 5, 0.0, 1)
    assert eff == _VARLEN


def test_varlen_on_meta_refuses_to_guess_where_torch_assumes_the_maximum_length():
    from torch.utils.flop_counter import flop_registry

    q, k, v, cu_q, cu_k = _packed("meta")
    # torch: every sequence at max_q 4 x max_k 5 -> 2 * 4*2*4*5*8 = 2560, not the executed 1472
    theirs = flop_registry[aten._flash_attention_forward](q, k, v, cu_q, cu_k, 4, 5, 0.0, True, False, out_val=None)
    assert theirs == 2 * 4 * 2 * 4 * 5 * 8 == 2560 != _VARLEN
    with pytest.raises(UncountableOpError, match="meta"):
        _kernel_formula("aten", "_flash_attention_forward")(q, k, v, cu_q, cu_k, 4, 5, 0.0, True, False)
    with pytest.raises(UncountableOpError, match="meta"):
        _kernel_formula("flash_attn", "_flash_attn_varlen_forward")(q, k, v, cu_q, cu_k, 4, 5, 0.0, 0.35, True)


def test_paged_keys_are_refused_not_guessed():
    q, k, v, cu_q, cu_k = _packed()
    table = torch.zeros(2, 1, dtype=torch.int32)
    with pytest.raises(UncountableOpError, match="block_table"):
        _kernel_formula("flash_attn", "_flash_attn_varlen_forward")(
            q, k, v, cu_q, cu_k, 4, 5, 0.0, 0.35, True, block_table=table
        )


def test_every_kernel_in_the_table_is_registered_when_its_op_exists():
    from vendor_shim.attention_kernels import KERNELS

    mapping = custom_mapping()
    for namespace, name in KERNELS:
        op = getattr(getattr(torch.ops, namespace), name, None) if namespace == "aten" else None
        if op is not None:
            assert op in mapping, f"{namespace}::{name} has no formula"
