"""FLOP formulas for ops `torch.utils.flop_counter` lacks, passed in via ``custom_mapping``.

Same convention as the counter: 2 FLOPs per multiply-add, attention over the full
query x key product (masked or not).  Each formula is derived from shapes only,
except `_grouped_mm`, whose group sizes live in the ``offs`` tensor's data.

- ``aten._scaled_dot_product_flash_attention_for_cpu`` (SDPA on CPU):
  q (..., Sq, Dqk), k (..., Sk, Dqk), v (..., Sk, Dv); batch dims of q include the
  query heads (GQA keys with fewer heads are broadcast by the kernel), so
  FLOPs = 2*prod(q.shape[:-1])*Sk*Dqk + 2*prod(q.shape[:-1])*Sk*Dv
        = 4*B*H*Sq*Sk*D when Dqk == Dv.
- ``aten._flash_attention_forward`` / ``aten._efficient_attention_forward`` (the CUDA kernels
  under SDPA, also callable directly): torch 2.13's built-in formulas read dense inputs as
  (B, H, S, D), but these kernels take (B, S, H, D); for Sq == Sk that silently yields
  4*B*S*H*H*D, and it asserts for Sq != Sk.  The shim's replacement reads (B, S, H, D) for
  dense inputs and defers to torch's formula for nested (cumulative-length) inputs.
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

import math
from typing import Any

import torch
import torch.utils.flop_counter as _torch_fc

from vendor_shim.errors import UncountableOpError

aten = torch.ops.aten


def sdpa_cpu_flash_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """Shapes-only formula (wrapped by the counter's ``shape_wrapper``)."""
    if len(query_shape) < 2 or len(key_shape) != len(query_shape) or len(value_shape) != len(query_shape):
        raise UncountableOpError(f"SDPA shapes q={query_shape} k={key_shape} v={value_shape} are not (..., S, D)")
    rows = math.prod(query_shape[:-1])  # batch x query heads x Sq
    s_k, d_qk = key_shape[-2], key_shape[-1]
    if query_shape[-1] != d_qk or value_shape[-2] != s_k:
        raise UncountableOpError(f"SDPA shapes q={query_shape} k={key_shape} v={value_shape} do not chain")
    return 2 * rows * s_k * d_qk + 2 * rows * s_k * value_shape[-1]


def _bshd_attention_flop(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    b, s_q, h_q, d_qk = query.shape
    s_k, d_v = key.shape[1], value.shape[-1]
    if key.shape[0] != b or key.shape[-1] != d_qk or value.shape[1] != s_k or h_q % key.shape[2]:
        raise UncountableOpError(f"attention shapes q={tuple(query.shape)} k={tuple(key.shape)} are not (B, S, H, D)")
    return 2 * b * h_q * s_q * s_k * d_qk + 2 * b * h_q * s_q * s_k * d_v


def flash_attention_forward_flop(query, key, value, cum_seq_q=None, cum_seq_k=None, *args: Any, **kwargs: Any) -> int:
    """Raw formula: dense (B, S, H, D) inputs here, nested ones via torch's own formula."""
    if cum_seq_q is None:
        return _bshd_attention_flop(query, key, value)
    return _torch_fc._flash_attention_forward_flop(query, key, value, cum_seq_q, cum_seq_k, *args, **kwargs)


def efficient_attention_forward_flop(query, key, value, bias=None, cu_q=None, cu_k=None, *args: Any, **kwargs: Any):
    """Raw formula: dense (B, S, H, D) inputs here, nested ones via torch's own formula."""
    if cu_q is None:
        return _bshd_attention_flop(query, key, value)
    return _torch_fc._efficient_attention_forward_flop(query, key, value, bias, cu_q, cu_k, *args, **kwargs)


flash_attention_forward_flop._get_raw = True  # type: ignore[attr-defined]
efficient_attention_forward_flop._get_raw = True  # type: ignore[attr-defined]


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
    extra = {}
    fallback = _optional_op("transformers", "grouped_mm_fallback")
    if fallback is not None:
        extra[fallback] = grouped_mm_flop
    return extra | {
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flash_flop,
        aten._grouped_mm: grouped_mm_flop,
        aten._flash_attention_forward: flash_attention_forward_flop,
        aten._efficient_attention_forward: efficient_attention_forward_flop,
    }
