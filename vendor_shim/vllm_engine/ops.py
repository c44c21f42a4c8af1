"""vLLM's own ops, as DeepSeek-OCR and DeepSeek-OCR 2 call them on CPU, each with its complete charge.

vLLM 0.32's CPU build replaces most of the eager model's aten ops with its kernels: every decoder linear is
``_C.onednn_mm`` (the weight is a prepacked oneDNN handle, invisible to the dispatcher), the routed experts one
``_C.cpu_fused_moe``, the router ``_C.weight_packed_linear`` on CPUs with AMX/AVX512 (``_C.onednn_mm`` elsewhere),
rotary embeddings ``_C.rotary_embedding``, decoder attention ``vllm.unified_attention_with_output`` over the paged
K/V cache (written by ``vllm.unified_kv_cache_update``), CLIP's attention ``vllm.torch_sdpa_wrapper``; the sampler
runs ``_C.greedy_argmax``.  A stock `FlopCounterMode` knows none of them and counts zero for each.

Charges (`vendor_shim.foreign_ops.ForeignCharge`), by the project's conventions (docs/conventions.md: 2 FLOPs per
multiply-add, attention over the full query x key product, masked or not).  Bytes are the kernel's boundary: what
it reads of its inputs (weights, K/V cache) and writes of its outputs; what a fused kernel keeps in registers or
scratch is not observable and not charged (docs/backends.md, "vllm").

- ``onednn_mm(c, a, bias, handle)``: a (M, K) x W (K, N) -> c.  2*M*K*N; reads a, W (K*N in a's dtype: the packed
  weight is the layer's, unquantized) and bias; writes c; bias add M*N elementwise.
- ``weight_packed_linear(x, W, bias, ...)``: the same, W a real (packed) tensor.
- ``cpu_fused_moe(out, x, w13, w2, b13, b2, topk_weights, topk_ids, skip_weighted, act, isa)``: T tokens x k experts
  each, w13 (E, 2I, h), w2 (E, h, I): 2*T*k*(2I*h + h*I).  Reads x, the routing tensors and the weights of the
  experts that got a token (distinct ``topk_ids``); writes out.  Elementwise per token-expert pair: SiLU and the
  gating product over I (the SwiGLU convention), the routing weight over h (unless skipped), and the sum of the k
  rows (k-1 adds over h per token).
- ``rotary_embedding(positions, q, k, head_size, cos_sin, is_neox, ...)``: in place over the rotated dims (rot =
  cos_sin's width) of every head: 3 FLOPs per rotated element (x*cos - y*sin); reads positions, the cos/sin rows
  (a buffer of the rotary module: weight bytes, one row per token) and the rotated elements; writes them.
- ``unified_attention_with_output(q, k, v, out, layer)``: per sequence i of the batch (the forward context's
  attention metadata: ``query_start_loc``, ``seq_lens``), q_i queries over s_i keys from the paged cache:
  ``2*H*q_i*s_i*(D + Dv)``; softmax (+ causal mask) per score; reads the queries and s_i keys and values per
  sequence from the cache (those reads are the ``kv_cache_bytes``); writes the output rows.
- ``unified_kv_cache_update(k, v, layer)``: reads the new keys and values, writes them into the cache (io).
- ``torch_sdpa_wrapper(q, k, v, scale, cu_seqlens, ...)``: (B, S, H, D), bidirectional, one problem per segment
  of ``cu_seqlens`` along S (the whole S without): ``2*B*H*s*s*(D + Dv)`` per segment; softmax per score; reads
  q, k, v; writes the output.
- ``greedy_argmax(logits)``: a reduction (1 per logit), outside every stage (the sampler).
"""

from __future__ import annotations

from typing import Any

import torch

from core.op_rules import ATTENTION_MASK, ATTENTION_SOFTMAX, ELEMENTWISE
from vendor_shim.errors import UncountableOpError
from vendor_shim.foreign_ops import ForeignCharge, ForeignOp, ForeignOps, total_bytes
from vendor_shim.op_meter import footprint

SILU = ELEMENTWISE["silu"][0]
MUL = ELEMENTWISE["mul"][0]
ROTARY_PER_ELEMENT = 3  # x*cos - y*sin: two multiplies and one add per rotated element


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, name: str) -> Any:
    return kwargs[name] if name in kwargs else (args[pos] if len(args) > pos else None)


def onednn_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    c, a, bias = _arg(args, kwargs, 0, "c"), _arg(args, kwargs, 1, "a"), _arg(args, kwargs, 2, "bias")
    k, n = int(a.shape[-1]), int(c.shape[-1])
    m = a.numel() // k if k else 0
    weight = k * n * a.element_size() + total_bytes([bias])
    return ForeignCharge(
        tensor_flops=2 * m * k * n,
        elementwise_flops=m * n if bias is not None else 0,
        read_bytes=footprint(a) + weight,
        write_bytes=footprint(c),
        weight_bytes=weight,
    )


def weight_packed_linear(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    x, w, bias = args[0], args[1], (args[2] if len(args) > 2 else None)
    k, n = int(x.shape[-1]), int(out.shape[-1])
    m = x.numel() // k if k else 0
    weight = total_bytes([w, bias if isinstance(bias, torch.Tensor) else None])
    return ForeignCharge(
        tensor_flops=2 * m * k * n,
        elementwise_flops=m * n if isinstance(bias, torch.Tensor) else 0,
        read_bytes=footprint(x) + weight,
        write_bytes=footprint(out),
        weight_bytes=weight,
        outputs=(out,),
    )


def experts_hit(topk_ids: torch.Tensor) -> int:
    """Distinct experts that got a token (data: refused on meta rather than guessed)."""
    if topk_ids.device.type == "meta":
        raise UncountableOpError("cpu_fused_moe on the meta device: the experts hit are data; count on cpu")
    return int(topk_ids.unique().numel())


def cpu_fused_moe(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    names = ("output", "input", "w13", "w2", "w13_bias", "w2_bias", "topk_weights", "topk_id", "skip_weighted")
    output, x, w13, w2, b13, b2, tw, ids, skip = (_arg(args, kwargs, i, n) for i, n in enumerate(names))
    t, h = int(x.shape[0]), int(x.shape[1])
    k = int(ids.shape[-1])
    e, two_i = int(w13.shape[0]), int(w13.shape[1])
    i = two_i // 2
    hit = experts_hit(ids)
    per_expert = sum(footprint(w) // e for w in (w13, w2, b13, b2) if w is not None)
    weight = hit * per_expert
    pairs = t * k
    ew = pairs * i * (SILU + MUL) + (0 if skip else pairs * h * MUL) + t * (k - 1) * h
    return ForeignCharge(
        tensor_flops=2 * pairs * (two_i * h + int(w2.shape[1]) * int(w2.shape[2])),
        elementwise_flops=ew,
        read_bytes=total_bytes([x, tw, ids]) + weight,
        write_bytes=footprint(output),
        weight_bytes=weight,
        experts_hit=hit,
    )


def rotary_embedding(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    positions, q, key = args[0], args[1], _arg(args, kwargs, 2, "key")
    head_size, cos_sin = int(_arg(args, kwargs, 3, "head_size")), _arg(args, kwargs, 4, "cos_sin_cache")
    tokens = positions.numel()
    rot = int(cos_sin.shape[-1])
    rotated = sum(t.numel() // head_size * rot for t in (q, key) if t is not None)
    moved = rotated * q.element_size()
    table = tokens * rot * cos_sin.element_size()  # the rows of the module's cos/sin buffer: a weight read
    return ForeignCharge(
        elementwise_flops=ROTARY_PER_ELEMENT * rotated,
        read_bytes=footprint(positions) + table + moved,
        write_bytes=moved,
        weight_bytes=table,
    )


def _attention_context(layer_name: Any) -> tuple[Any, Any, torch.Tensor]:
    """vLLM's attention metadata, layer and K/V cache for ``layer_name`` (the forward context the op reads)."""
    from vllm.model_executor.layers.attention.attention import _resolve_layer_name, get_attention_context

    metadata, layer, kv_cache, _ = get_attention_context(_resolve_layer_name(layer_name))
    return metadata, layer, kv_cache


def paged_attention(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    q, output, layer_name = args[0], _arg(args, kwargs, 3, "output"), _arg(args, kwargs, 4, "layer_name")
    metadata, layer, kv_cache = _attention_context(layer_name)
    if metadata is None:  # vLLM's warm-up forward: the kernel returns at once
        return ForeignCharge()
    starts = [int(x) for x in metadata.query_start_loc.tolist()]
    seq_lens = [int(x) for x in metadata.seq_lens.tolist()]
    heads, d = int(q.shape[-2]), int(q.shape[-1])
    dv = int(output.shape[-1])
    kv_heads = int(layer.num_kv_heads)
    queries = [starts[j + 1] - starts[j] for j in range(len(seq_lens))]
    scores = sum(heads * qj * sj for qj, sj in zip(queries, seq_lens, strict=True))
    rows = starts[len(seq_lens)]
    kv = sum(seq_lens) * kv_heads * (d + dv) * kv_cache.element_size()
    per_score = ATTENTION_SOFTMAX + (ATTENTION_MASK if bool(getattr(metadata, "causal", True)) else 0)
    return ForeignCharge(
        tensor_flops=2 * scores * (d + dv),
        elementwise_flops=per_score * scores,
        read_bytes=rows * heads * d * q.element_size() + kv,
        write_bytes=rows * heads * dv * output.element_size(),
        kv_cache_bytes=kv,
    )


def kv_cache_update(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    moved = total_bytes([args[0], args[1]])
    return ForeignCharge(read_bytes=moved, write_bytes=moved, outputs=(out,) if isinstance(out, torch.Tensor) else ())


def vit_sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    q, k, v = args[0], args[1], args[2]
    cu = _arg(args, kwargs, 4, "cu_seqlens")
    b, s, h, d = (int(x) for x in q.shape)
    dv = int(v.shape[-1])
    segments = [s] if cu is None else [int(e) - int(a) for a, e in zip(cu.tolist()[:-1], cu.tolist()[1:], strict=True)]
    kv_per_q = int(k.shape[1]) if cu is None else None  # without segments every query sees every key
    scores = sum(b * h * n * (kv_per_q if kv_per_q is not None else n) for n in segments)
    return ForeignCharge(
        tensor_flops=2 * scores * (d + dv),
        elementwise_flops=ATTENTION_SOFTMAX * scores,
        read_bytes=total_bytes([q, k, v, cu]),
        write_bytes=footprint(out),
        outputs=(out,),
    )


def greedy_argmax(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> ForeignCharge:
    logits = args[0]
    return ForeignCharge(
        elementwise_flops=logits.numel(),
        read_bytes=footprint(logits),
        write_bytes=footprint(out),
        outputs=(out,),
    )


VLLM_OPS = ForeignOps(
    (
        ForeignOp("_C", "onednn_mm", "linear", onednn_mm, tensor_work=True),
        ForeignOp("_C", "weight_packed_linear", "linear", weight_packed_linear, tensor_work=True),
        ForeignOp("_C", "cpu_fused_moe", "fused_moe", cpu_fused_moe, tensor_work=True, routing=True),
        ForeignOp("_C", "rotary_embedding", "elementwise", rotary_embedding),
        ForeignOp("vllm", "unified_attention_with_output", "attention", paged_attention, tensor_work=True),
        ForeignOp("vllm", "unified_kv_cache_update", "cache_update", kv_cache_update),
        ForeignOp("vllm", "torch_sdpa_wrapper", "attention", vit_sdpa, tensor_work=True),
        ForeignOp("_C", "greedy_argmax", "reduction", greedy_argmax),
    )
)

# Scheduler bookkeeping the audit meets (integer tensors only: classified non_float, nothing to charge):
# _C.compute_slot_mapping_kernel_impl, _C.get_scheduler_metadata.
SCHEDULER_OPS = ("_C::compute_slot_mapping_kernel_impl", "_C::get_scheduler_metadata")
