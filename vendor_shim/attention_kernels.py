"""Attention kernels as the dispatcher sees them: their layouts, and the attention problems one call solves.

One table (`KERNELS`) says, per kernel op, where its query, key and value are, how they are laid out, which
arguments are cumulative sequence lengths, masks or biases, and which flag makes it causal.  Two users read it:
the FLOP formulas (`vendor_shim.formulas`, 2 FLOPs per multiply-add over the full query x key product, masked or
causal or not) and the meter (`vendor_shim.op_meter`), which charges a kernel called outside
`F.scaled_dot_product_attention` exactly as it charges the fused op (softmax per score, q/k/v/mask read, output
written), so a direct call (flash-attn's `flash_attn_func`, transformers' ``flash_attention_2``) and an SDPA call
cost the same.

Layouts:

- ``bhsd`` (the SDPA-level ops, CPU and CUDA): q (..., H, Sq, Dqk), k/v (..., Hk, Sk, D); every leading
  dimension of q counts as a batch of query rows (GQA keys with fewer heads are broadcast by the kernel);
- ``bshd`` (`aten._flash_attention_forward`, `aten._efficient_attention_forward`, ``flash_attn::_flash_attn_forward``
  dense): q (B, Sq, H, Dqk), k/v (B, Sk, Hk, D);
- ``thd`` (variable length: the same ops given cumulative sequence lengths, ``flash_attn::_flash_attn_varlen_forward``):
  q (total_q, H, Dqk), k/v (total_k, Hk, D) -- or (1, total, H, D) for `_efficient_attention_forward` --, sequence i
  spans ``cu_q[i]:cu_q[i+1]`` queries and ``cu_k[i]:cu_k[i+1]`` keys (``seqused_k[i]`` keys when given); FLOPs
  ``sum_i 2 H s_q,i s_k,i (Dqk + Dv)``.  The lengths are data: on the meta device they are unknown and the formula
  refuses (`UncountableOpError`) rather than guess the maximum length as torch's own formula does.

Paged KV caches (``block_table``) and left-padded keys (``leftpad_k``) are refused the same way: no DeepSeek-OCR
code path uses them, and guessing would be a wrong number.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from vendor_shim.errors import UncountableOpError


@dataclass(frozen=True)
class AttentionKernel:
    """Where one kernel op keeps what its cost depends on (parameter names of its schema)."""

    layout: str  # "bhsd" | "bshd": the dense layout; with cumulative lengths given, "thd"
    params: tuple[str, ...]  # positional parameters in schema order (kwarg-only ones arrive by name)
    query: str = "query"
    key: str = "key"
    value: str = "value"
    cu_q: str | None = None  # cumulative query lengths (varlen), None for dense-only kernels
    cu_k: str | None = None
    used_k: str | None = None  # per-sequence key counts overriding cu_k's (flash seqused_k, efficient seqlen_k)
    masks: tuple[str, ...] = ()  # tensors applied per score (attn_mask, attn_bias, alibi slopes)
    causal: str | None = None  # a flag (truthy: causal)
    mask_type: str | None = None  # an int mask type (efficient attention: 0 none, 1/2 causal)
    windows: tuple[str, ...] = ()  # local-window sizes: a value other than None/-1 masks scores
    refused: tuple[str, ...] = ("block_table", "leftpad_k")  # arguments whose layout the formula does not read

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name (positional ones by schema order, kwarg-only ones as given)."""
        bound = dict(zip(self.params, args, strict=False))
        bound.update(kwargs)
        bound.pop("out_val", None)
        return bound


_SDPA = ("query", "key", "value")
_FLASH_ATTN = ("q", "k", "v")
_FA_NAMES = {"query": "q", "key": "k", "value": "v"}


def _sdpa_kernel(*params: str, masks: tuple[str, ...] = ()) -> AttentionKernel:
    """One of aten's SDPA kernels: (B, H, S, D) q, k, v, then ``params`` in schema order, causal by ``is_causal``."""
    return AttentionKernel("bhsd", (*_SDPA, *params), masks=masks, causal="is_causal")


# (namespace, op name) -> kernel; schemas of torch 2.13 and flash-attn 2.6-2.8 (both of its namespaces)
KERNELS: dict[tuple[str, str], AttentionKernel] = {
    ("aten", "_scaled_dot_product_flash_attention_for_cpu"): _sdpa_kernel(
        "dropout_p", "is_causal", masks=("attn_mask",)
    ),
    ("aten", "_scaled_dot_product_flash_attention"): _sdpa_kernel("dropout_p", "is_causal", "return_debug_mask"),
    ("aten", "_scaled_dot_product_efficient_attention"): _sdpa_kernel(
        "attn_bias", "compute_log_sumexp", "dropout_p", "is_causal", masks=("attn_bias",)
    ),
    ("aten", "_scaled_dot_product_cudnn_attention"): _sdpa_kernel(
        "attn_bias", "compute_log_sumexp", "dropout_p", "is_causal", "return_debug_mask", masks=("attn_bias",)
    ),
    ("aten", "_scaled_dot_product_fused_attention_overrideable"): _sdpa_kernel(
        "attn_bias", "dropout_p", "is_causal", "return_debug_mask", masks=("attn_bias",)
    ),
    ("aten", "_flash_attention_forward"): AttentionKernel(
        "bshd",
        (*_SDPA, "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal", "return_debug_mask"),
        cu_q="cum_seq_q",
        cu_k="cum_seq_k",
        used_k="seqused_k",
        masks=("alibi_slopes",),
        causal="is_causal",
        windows=("window_size_left", "window_size_right"),
    ),
    ("aten", "_efficient_attention_forward"): AttentionKernel(
        "bshd",
        (
            *_SDPA,
            "bias",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "max_seqlen_q",
            "max_seqlen_k",
            "dropout_p",
            "custom_mask_type",
            "compute_log_sumexp",
        ),
        cu_q="cu_seqlens_q",
        cu_k="cu_seqlens_k",
        used_k="seqlen_k",
        masks=("bias",),
        mask_type="custom_mask_type",
        windows=("window_size",),
    ),
}
# flash-attn 2's two forwards share their tail of arguments and how they mask
_FA_TAIL = (
    "dropout_p",
    "softmax_scale",
    "causal",
    "window_size_left",
    "window_size_right",
    "softcap",
    "alibi_slopes",
    "return_softmax",
)
_FA_MASKING: dict[str, Any] = {
    "masks": ("alibi_slopes",),
    "causal": "causal",
    "windows": ("window_size_left", "window_size_right"),
}
_FA_VARLEN = ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")
for _ns in ("flash_attn", "flashattn"):  # flash-attn 2.6/2.7 register flash_attn::, later releases flashattn::
    KERNELS[(_ns, "_flash_attn_forward")] = AttentionKernel(
        "bshd", (*_FLASH_ATTN, *_FA_TAIL), **_FA_NAMES, **_FA_MASKING
    )
    KERNELS[(_ns, "_flash_attn_varlen_forward")] = AttentionKernel(
        "thd",
        (*_FLASH_ATTN, *_FA_VARLEN, *_FA_TAIL, "block_table", "leftpad_k", "seqused_k"),
        **_FA_NAMES,
        cu_q="cu_seqlens_q",
        cu_k="cu_seqlens_k",
        used_k="seqused_k",
        **_FA_MASKING,
    )


@dataclass(frozen=True)
class AttentionProblem:
    """``rows`` independent attentions (batch x query heads) of ``s_q`` queries over ``s_k`` keys."""

    rows: int
    s_q: int
    s_k: int
    d_qk: int
    d_v: int

    @property
    def flops(self) -> int:
        """Q K^T (2 rows s_q s_k d_qk) plus P V (2 rows s_q s_k d_v): the full product, masked or not."""
        return 2 * self.rows * self.s_q * self.s_k * (self.d_qk + self.d_v)

    @property
    def scores(self) -> int:
        return self.rows * self.s_q * self.s_k


@dataclass(frozen=True)
class AttentionCall:
    """One executed kernel call: its problems and the tensors the fused-attention convention reads."""

    problems: tuple[AttentionProblem, ...]
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    masks: tuple[torch.Tensor, ...]  # per-score masks and biases given as tensors
    index: tuple[torch.Tensor, ...]  # cumulative / per-sequence lengths the kernel reads
    masked: bool  # a mask, a bias, causal or a local window applies to the scores

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.problems)

    @property
    def scores(self) -> int:
        return sum(p.scores for p in self.problems)


def kernel_of(func: Any) -> AttentionKernel | None:
    """The table entry of an op overload or packet (None for every other op)."""
    packet = getattr(func, "_overloadpacket", func)
    qualified = str(getattr(packet, "_qualified_op_name", ""))  # "aten::_flash_attention_forward"
    namespace, _, name = qualified.partition("::")
    return KERNELS.get((namespace, name))


def attention_call(kernel: AttentionKernel, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AttentionCall:
    """What one call of ``kernel`` computes (module docstring); `UncountableOpError` where it cannot be known."""
    a = kernel.bind(args, kwargs)
    q, k, v = a.get(kernel.query), a.get(kernel.key), a.get(kernel.value)
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise UncountableOpError(f"attention kernel called without query/key/value tensors ({sorted(a)})")
    for name in kernel.refused:
        if a.get(name) is not None:
            raise UncountableOpError(f"attention with {name} (paged or left-padded keys): extend the formula")
    cu_q = a.get(kernel.cu_q) if kernel.cu_q else None
    cu_k = a.get(kernel.cu_k) if kernel.cu_k else None
    used_k = a.get(kernel.used_k) if kernel.used_k else None
    if kernel.layout == "thd" or cu_q is not None:
        problems = _varlen_problems(q, k, v, cu_q, cu_k, used_k)
    elif kernel.layout == "bshd":
        if used_k is not None:
            raise UncountableOpError("dense attention with per-batch key counts (seqused_k): extend the formula")
        problems = (_bshd_problem(q, k, v),)
    else:
        problems = (_bhsd_problem(q, k, v),)
    masks = tuple(a[m] for m in kernel.masks if isinstance(a.get(m), torch.Tensor))
    index = tuple(t for t in (cu_q, cu_k, used_k) if isinstance(t, torch.Tensor))
    causal = bool(a.get(kernel.causal)) if kernel.causal else False
    causal = causal or (kernel.mask_type is not None and bool(a.get(kernel.mask_type)))
    windowed = any(a.get(w) not in (None, -1) for w in kernel.windows)
    return AttentionCall(problems, q, k, v, masks, index, bool(masks) or causal or windowed)


def _shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    return f"q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}"


def _bhsd_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionProblem:
    """(..., H, Sq, D): every leading dimension of q is a batch of query rows; keys may have fewer heads (GQA)."""
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise UncountableOpError(f"SDPA shapes {_shapes(q, k, v)} are not (..., S, D)")
    s_k, d_qk = k.shape[-2], k.shape[-1]
    if q.shape[-1] != d_qk or v.shape[-2] != s_k or (q.dim() >= 3 and k.shape[-3] and q.shape[-3] % k.shape[-3]):
        raise UncountableOpError(f"SDPA shapes {_shapes(q, k, v)} do not chain")
    return AttentionProblem(math.prod(q.shape[:-2]), q.shape[-2], s_k, d_qk, v.shape[-1])


def _bshd_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionProblem:
    """(B, S, H, D), the flash/efficient kernels' own layout (torch's built-in formulas read it as (B, H, S, D))."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise UncountableOpError(f"attention shapes {_shapes(q, k, v)} are not (B, S, H, D)")
    b, s_q, h_q, d_qk = q.shape
    s_k = k.shape[1]
    if k.shape[0] != b or k.shape[-1] != d_qk or tuple(v.shape[:3]) != tuple(k.shape[:3]) or h_q % k.shape[2]:
        raise UncountableOpError(f"attention shapes {_shapes(q, k, v)} are not (B, S, H, D)")
    return AttentionProblem(b * h_q, s_q, s_k, d_qk, v.shape[-1])


def _lengths(t: torch.Tensor, what: str, cumulative: bool) -> list[int]:
    if t.device.type == "meta":
        raise UncountableOpError(
            f"variable-length attention: {what} has no data on the meta device and the lengths decide the FLOPs: "
            "count it on cpu or cuda"
        )
    if t.dim() != 1:
        raise UncountableOpError(f"variable-length attention: {what} has shape {tuple(t.shape)}, not (n,)")
    values = [int(x) for x in t.tolist()]
    return [b - a for a, b in itertools.pairwise(values)] if cumulative else values


def _varlen_problems(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: Any, cu_k: Any, used_k: Any
) -> tuple[AttentionProblem, ...]:
    """Packed sequences: (total, H, D), or (1, total, H, D) as `_efficient_attention_forward` takes them."""
    if not isinstance(cu_q, torch.Tensor) or not isinstance(cu_k, torch.Tensor):
        raise UncountableOpError("variable-length attention without cu_seqlens_q and cu_seqlens_k: extend the formula")
    q3, k3, v3 = (t[0] if t.dim() == 4 and t.shape[0] == 1 else t for t in (q, k, v))
    if q3.dim() != 3 or k3.dim() != 3 or v3.dim() != 3:
        raise UncountableOpError(f"variable-length attention shapes {_shapes(q, k, v)} are not (total, H, D)")
    h_q, d_qk, d_v = q3.shape[1], q3.shape[2], v3.shape[2]
    if k3.shape[2] != d_qk or k3.shape[0] != v3.shape[0] or h_q % k3.shape[1]:
        raise UncountableOpError(f"variable-length attention shapes {_shapes(q, k, v)} do not chain")
    len_q = _lengths(cu_q, "cu_seqlens_q", cumulative=True)
    len_k = _lengths(used_k, "seqused_k", cumulative=False) if isinstance(used_k, torch.Tensor) else None
    if len_k is None:
        len_k = _lengths(cu_k, "cu_seqlens_k", cumulative=True)
    if len(len_q) != len(len_k) or sum(len_q) > q3.shape[0] or min(len_q + len_k, default=0) < 0:
        raise UncountableOpError(
            f"variable-length attention: {len(len_q)} query and {len(len_k)} key sequences over {_shapes(q, k, v)} "
            "do not fit the packed tensors"
        )
    return tuple(AttentionProblem(h_q, sq, sk, d_qk, d_v) for sq, sk in zip(len_q, len_k, strict=True))


def attention_flop_formula(kernel: AttentionKernel) -> Any:
    """A raw FlopCounterMode formula (real arguments: varlen lengths are data) for one kernel."""

    def formula(*args: Any, **kwargs: Any) -> int:
        return attention_call(kernel, args, kwargs).flops

    formula._get_raw = True  # type: ignore[attr-defined]
    formula.__doc__ = f"FLOPs of one {kernel.layout} attention kernel call (vendor_shim.attention_kernels)."
    return formula
