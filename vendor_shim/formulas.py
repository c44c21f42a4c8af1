"""FLOP formulas for ops `torch.utils.flop_counter` lacks, passed in via ``custom_mapping``.

Same convention as the counter: 2 FLOPs per multiply-add, attention over the full
query x key product (masked or not).  Each formula is derived from shapes only,
except `_grouped_mm`, whose group sizes live in the ``offs`` tensor's data, and variable-length
attention, whose sequence lengths live in ``cu_seqlens``.

- every attention kernel of `vendor_shim.attention_kernels.KERNELS` (SDPA's CPU and CUDA kernels, the
  (B, S, H, D) flash/efficient kernels, flash-attn 2's ``flash_attn::_flash_attn_forward`` and
  ``_flash_attn_varlen_forward`` when that package has registered them): the full Sq x Sk product in each
  kernel's own layout, ``2 * rows * Sq * Sk * (Dqk + Dv)`` per problem, i.e. ``4*B*H*Sq*Sk*D`` when
  Dqk == Dv, and ``sum_i 4*H*s_q,i*s_k,i*D`` over the sequences of a variable-length call.  They replace
  torch 2.13's built-in formulas where those exist: for the (B, S, H, D) kernels those read dense inputs as
  (B, H, S, D) (heads and sequence swapped: 4*B*S*H*H*D for Sq == Sk, an assertion for Sq != Sk), and for
  cumulative lengths on meta they assume every sequence has the maximum length.
- ``aten._grouped_mm`` (MoE experts in transformers 5): 2 * sum_g M_g*K_g*N_g.  With
  ``offs`` (cumulative group ends) the summed extent is ``offs[-1]`` along the split
  dimension (M for 2D x 3D, K for 2D x 2D, N for 3D x 2D); without ``offs`` it is a
  batched 3D x 3D matmul.  On the meta device ``offs`` has no data: the formula raises
  `UncountableOpError` instead of guessing (meta is for the vision stack, which has no
  grouped matmul).
- ``transformers::grouped_mm_fallback`` (transformers' loop-of-mm fallback when
  `torch._grouped_mm` cannot run, e.g. some dtypes on CUDA): same semantics as the 2D x 3D
  case, registered only when transformers has defined the op (this module never imports it).
"""

from __future__ import annotations

from typing import Any

import torch

from vendor_shim.attention_kernels import KERNELS, attention_flop_formula
from vendor_shim.errors import UncountableOpError

aten = torch.ops.aten


def grouped_mm_flop(
    a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None, *args: Any, **kwargs: Any
) -> int:
    """Raw formula (needs ``offs`` data): called with the op's real arguments."""
    offs = kwargs.pop("offs", offs)
    kwargs.pop("out_val", None)
    if a.dim() == 3 and b.dim() == 3:
        g, m, k = a.shape
        n = b.shape[-1]
        if offs is not None:
            raise UncountableOpError("_grouped_mm 3D x 3D with offs is not a documented layout: extend the formula")
        return 2 * g * m * k * n
    if offs is None:
        raise UncountableOpError(f"_grouped_mm {tuple(a.shape)} x {tuple(b.shape)} without offs: extend the formula")
    if offs.device.type == "meta":
        raise UncountableOpError(
            "_grouped_mm on the meta device: group sizes are data-dependent; count the decoder on cpu or cuda"
        )
    total = int(offs[-1].item()) if offs.numel() else 0
    if a.dim() == 2 and b.dim() == 3:  # tokens split along M: (sum M_g, K) x (G, K, N)
        return 2 * total * a.shape[1] * b.shape[2]
    if a.dim() == 2 and b.dim() == 2:  # split along K: (M, sum K_g) x (sum K_g, N) -> (G, M, N)
        return 2 * a.shape[0] * total * b.shape[1]
    if a.dim() == 3 and b.dim() == 2:  # split along N: (G, M, K) x (K, sum N_g) -> (M, sum N_g)
        return 2 * a.shape[1] * a.shape[2] * total
    raise UncountableOpError(f"_grouped_mm {tuple(a.shape)} x {tuple(b.shape)}: unknown layout, extend the formula")


grouped_mm_flop._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes real tensors


def _optional_op(namespace: str, name: str) -> Any | None:
    """An op packet if some library registered it, else None (no import side effects)."""
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def custom_mapping() -> dict[Any, Any]:
    """The formulas the shim adds to FlopCounterMode (a fresh dict per call; no global registry edits)."""
    extra: dict[Any, Any] = {aten._grouped_mm: grouped_mm_flop}
    fallback = _optional_op("transformers", "grouped_mm_fallback")
    if fallback is not None:
        extra[fallback] = grouped_mm_flop
    for (namespace, name), kernel in KERNELS.items():
        op = _optional_op(namespace, name)  # flash-attn's ops exist only once that package has been imported
        if op is not None:
            extra[op] = attention_flop_formula(kernel)
    return extra
