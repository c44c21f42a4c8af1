"""Shapes-only execution on a real device: the counted ops run hollow, everything else for real.

Counting does not need the arithmetic of the ops it counts: a tensor-FLOP formula reads
shapes only (and, for `_grouped_mm`, the group offsets, which come from real integer ops).
`HollowExecution` is the executor of the audit mode (`vendor_shim.audit.AuditMode`), the
bottom of the mode stack: the counter and the audit still see every op exactly as the real
run dispatches it, and only where the real run would call the kernel does this step in:

- an op in the hollow set (every op the counter has a formula for, plus ``embedding``, a
  gather whose values nothing counted depends on) returns zero-filled outputs with the
  shape, dtype and strides its meta kernel gives, computed without touching the inputs'
  data.  Where no meta kernel exists a shape rule in `SHAPE_RULES` answers; failing that
  the op runs for real and is listed in `HollowStats.ran_for_real` (slow, never wrong);
- every ``topk`` over the last dimension returns the balanced round-robin selection:
  flattened row r, slot j -> expert ``(start + r*k + j) mod E`` with ``start`` running on
  across calls, so each of E experts receives rows*k/E selections (+-1), as a trained,
  load-balanced router nearly does.  Values are gathered from the real input at those
  indices.  This is the routing the trace records (``execution.routing``);
- everything else (norms, activations, softmax, residuals, index bookkeeping, the
  generation loop itself) runs for real on tensors that are mostly zeros.

Control flow that depends on data (`generate()`, the official per-expert ``moe_infer``
loop) therefore takes the same branches with the same shapes as a real run with that
routing, which is why the tests can demand equality with a real run op family by op
family.  Large weights need never be written (see `small_parameters`): nothing that
reads them computes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_map

from core.op_rules import ALIAS_BY_BEHAVIOUR

aten = torch.ops.aten

ROUTING_BALANCED = "balanced round-robin: row r, slot j -> expert (start + r*k + j) mod E, start running across calls"
_TOPK = aten.topk
GATHER_OPS = (aten.embedding,)  # reads table rows; outputs feed only counted ops and norms
SMALL_PARAMETER_NUMEL = 1 << 20  # parameters up to this size are written; larger ones are never read by real math


def _grouped_mm_shape(a: torch.Tensor, b: torch.Tensor, *_: Any, **kw: Any) -> tuple[list[int], torch.dtype]:
    """torch._grouped_mm output shape (its meta kernel refuses some dtypes): 2Dx3D -> (M, N), 2Dx2D -> (G, M, N),
    3Dx2D -> (M, N_total), 3Dx3D -> (G, M, N)."""
    offs = kw.get("offs", _[0] if _ else None)
    out_dtype = kw.get("out_dtype") or a.dtype
    if a.dim() == 2 and b.dim() == 3:
        return [a.shape[0], b.shape[-1]], out_dtype
    if a.dim() == 2 and b.dim() == 2:
        return [int(offs.shape[0]), a.shape[0], b.shape[1]], out_dtype
    if a.dim() == 3 and b.dim() == 2:
        return [a.shape[1], b.shape[1]], out_dtype
    return [a.shape[0], a.shape[1], b.shape[-1]], out_dtype


SHAPE_RULES: dict[Any, Callable[..., tuple[list[int], torch.dtype]]] = {aten._grouped_mm: _grouped_mm_shape}


@dataclass
class HollowStats:
    """What the hollow run did instead of arithmetic (goes into the trace's ``execution``)."""

    hollow_calls: Counter[str] = field(default_factory=Counter)  # op -> calls answered with zeros
    ran_for_real: Counter[str] = field(default_factory=Counter)  # hollow-set ops with no shape answer
    topk_calls: int = 0
    topk_rows: int = 0
    meta_memo_hits: int = 0  # meta ops answered from the layout memo

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "shapes",
            "hollow_ops": dict(sorted(self.hollow_calls.items())),
            "ran_for_real": dict(sorted(self.ran_for_real.items())),
            "routing": ROUTING_BALANCED,
            "topk_calls": self.topk_calls,
            "topk_rows": self.topk_rows,
            "meta_memo_hits": self.meta_memo_hits,
        }


def _meta_like(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def _first_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device:
    for x in (*args, *kwargs.values()):
        if isinstance(x, torch.Tensor):
            return x.device
        if isinstance(x, list | tuple):
            for y in x:
                if isinstance(y, torch.Tensor):
                    return y.device
    return torch.device("cpu")


def _signature(x: Any) -> Any:
    """What an op's output layout can depend on: tensor geometry and dtype, and every other argument's value."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.stride(), x.dtype, x.storage_offset())
    if isinstance(x, list | tuple):
        return (type(x).__name__, *map(_signature, x))
    if isinstance(x, dict):
        return ("D", *((k, _signature(v)) for k, v in sorted(x.items())))
    return x


class HollowExecution:
    """Runs one dispatched op hollow or for real (module docstring).  ``counted_ops``: the counter's formula
    registry keys (overload packets).  Called as ``execute(func, args, kwargs)`` inside a dispatch mode."""

    def __init__(self, counted_ops: set[Any] | frozenset[Any]) -> None:
        self.hollow = frozenset(counted_ops) | frozenset(GATHER_OPS)
        self.stats = HollowStats()
        self._next_expert: dict[int, int] = {}
        self._mutable = {  # in-place/out= overloads write an argument: those run for real
            op
            for packet in self.hollow
            if isinstance(packet, torch._ops.OpOverloadPacket)  # not higher-order ops (flex attention)
            for op in (getattr(packet, n) for n in packet.overloads())
            if op._schema.is_mutable
        }
        self._layouts: dict[Any, Any] = {}
        self._is_functional: dict[Any, bool] = {}  # (op, argument signature) -> meta outputs (decode repeats shapes)

    def __call__(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        packet = func._overloadpacket
        device = _first_device(args, kwargs)
        if device.type == "meta":  # already shapes-only (e.g. the vision stack counted on meta)
            return self._meta(func, args, kwargs)
        if packet in self.hollow and func not in self._mutable:
            out = self._hollow(func, args, kwargs, device)
            if out is not None:
                self.stats.hollow_calls[str(func)] += 1
                return out
            self.stats.ran_for_real[str(func)] += 1
        elif packet is _TOPK:
            return self._balanced_topk(args, kwargs)
        return func(*args, **kwargs)

    def _meta(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A meta op answered from the layout memo when it was seen with the same argument geometry: meta kernels
        are mostly Python (0.5-3 ms for addmm, layer_norm, upsample), and SAM's and CLIP's blocks repeat shapes."""
        if not self._functional(func):
            return func(*args, **kwargs)
        key = (func, _signature(args), _signature(kwargs))
        layout = self._layouts.get(key)
        if layout is None:
            out = func(*args, **kwargs)
            flat = out if isinstance(out, tuple | list) else (out,)
            if all(isinstance(o, torch.Tensor) and o.storage_offset() == 0 for o in flat):
                self._layouts[key] = tree_map(_meta_like, out)  # a copy: the memo must not keep outputs alive
            return out
        self.stats.meta_memo_hits += 1
        return tree_map(_meta_like, layout)

    def _functional(self, func: Any) -> bool:
        """Neither writes an argument nor returns a view of one (so a fresh tensor is a faithful answer).  The ops
        whose schema says "new tensor" while the kernel returns a view (`ALIAS_BY_BEHAVIOUR`: ``_unsafe_view`` after
        every 3-D matmul) are not: a fresh answer would cut the view off its storage, and the live-bytes book would
        see the storage die while the view still holds it (peak_bytes too low)."""
        ok = self._is_functional.get(func)
        if ok is None:
            schema = func._schema
            alias = str(func._overloadpacket.__name__).split(".")[-1] in ALIAS_BY_BEHAVIOUR
            ok = not alias and not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
            self._is_functional[func] = ok
        return ok

    def _hollow(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device) -> Any:
        key = (func, _signature(args), _signature(kwargs))
        meta_out = self._layouts.get(key)
        if meta_out is None:
            try:
                meta_out = func(*tree_map(_meta_like, args), **tree_map(_meta_like, kwargs))
            except (RuntimeError, NotImplementedError, TypeError):
                rule = SHAPE_RULES.get(func._overloadpacket)
                if rule is None:
                    return None
                shape, dtype = rule(*args, **kwargs)
                return torch.zeros(shape, dtype=dtype, device=device)
            self._layouts[key] = meta_out

        def real(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.device.type == "meta":
                return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device).zero_()
            return x

        return tree_map(real, meta_out)

    def _balanced_topk(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = args[0]
        k = int(args[1] if len(args) > 1 else kwargs["k"])
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        if x.dim() == 0 or dim not in (-1, x.dim() - 1) or k > x.shape[-1]:
            return aten.topk(*args, **kwargs)
        n_experts = int(x.shape[-1])
        rows = math.prod(x.shape[:-1])
        start = self._next_expert.get(n_experts, 0)
        self._next_expert[n_experts] = (start + rows * k) % n_experts
        flat = torch.arange(start, start + rows * k, device=x.device, dtype=torch.long) % n_experts
        indices = flat.view(*x.shape[:-1], k)
        self.stats.topk_calls += 1
        self.stats.topk_rows += rows
        return torch.gather(x, -1, indices), indices


def small_parameters(module: torch.nn.Module, limit: int = SMALL_PARAMETER_NUMEL) -> torch.nn.ParameterList:
    """The parameters a hollow run reads for real (norm scales, biases, small tables): the ones worth writing."""
    return torch.nn.ParameterList([p for p in module.parameters() if p.numel() <= limit])
