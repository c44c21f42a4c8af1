"""Every measured metric of one executed aten op, by the definitions in `core.op_rules`.

`OpMeter.measure(func, name, args, kwargs, out, flops)` returns the op's traffic vector (`core.metrics.TRAFFIC` order,
``flops`` the audit's formula value as its tensor FLOPs) plus the run-allocated storages it read, so the
decoder's KV-cache reads can be told apart once the forward says which tensors are its cache
(`vendor_shim.stages.cache_tensors`).
`StorageBook` follows every storage the run allocates (weak finalizers on the storage object, which
die exactly when the memory does) and keeps the live byte count that ``peak_bytes`` is the maximum of.
`FusedAttention` makes `F.scaled_dot_product_attention` one op on every device (see the conventions); an
attention kernel called directly (flash-attn's custom ops, `vendor_shim.attention_kernels`) is charged the same way.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from core.metrics import TRAFFIC
from core.op_rules import (
    ALIAS_BY_BEHAVIOUR,
    ATTENTION_MASK,
    ATTENTION_SOFTMAX,
    BIAS_IN_KERNEL,
    GATHERS,
    LAYOUT_ONLY,
    OVERWRITES,
    elementwise_flops,
    is_movement,
)
from vendor_shim.attention_kernels import AttentionCall, AttentionKernel, attention_call, kernel_of

# The per-op vector is the op's traffic in core.metrics.TRAFFIC order (each metric is a function of it:
# core.metrics.op_metrics); kv_cache_bytes is filled in when the forward ends.
TENSOR = TRAFFIC.index("tensor_flops")  # each position named by its traffic entry, so the tuple alone orders them
ELEMENTWISE = TRAFFIC.index("elementwise_flops")
READ = TRAFFIC.index("read_bytes")
WRITE = TRAFFIC.index("write_bytes")
WEIGHT = TRAFFIC.index("weight_bytes")
KV = TRAFFIC.index("kv_cache_bytes")
FUSED_ATTENTION = "fused.scaled_dot_product_attention"


def footprint(t: torch.Tensor) -> int:
    """Bytes a kernel addresses: element size x sizes over non-broadcast (stride != 0) dimensions."""
    if t.is_contiguous():  # no dimension of size > 1 has stride 0: all of it (asked ~1,600 times per decode step)
        return t.numel() * t.element_size()
    n = t.element_size()
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if size == 0:
            return 0
        if stride:
            n *= size
    return n


def _tensors(xs: Iterable[Any]) -> Iterable[tuple[int, torch.Tensor]]:
    """(argument position, tensor) for tensors and tensors inside lists (cat, stack, index)."""
    for i, x in enumerate(xs):
        if isinstance(x, torch.Tensor):
            yield i, x
        elif isinstance(x, list | tuple):
            for y in x:
                if isinstance(y, torch.Tensor):
                    yield i, y


@dataclass(frozen=True)
class _OpKind:
    """What the schema says about one overload (cached: asked thousands of times per forward)."""

    base: str
    view: bool  # returns an alias of an input and writes nothing
    written: tuple[int, ...]  # positions of arguments the op writes in place
    overwrite: bool  # writes its destination without reading it
    gather: bool
    movement: bool  # a data-movement category of the audit: 0 FLOPs by definition
    layout_only: bool  # reads only the metadata of its tensor argument
    grouped_mm: bool  # aten._grouped_mm: its stacked weight is read for the groups that got rows only
    attention: AttentionKernel | None  # an attention kernel: charged as the fused op when called directly

    @classmethod
    def of(cls, func: Any) -> _OpKind:
        schema = func._schema
        base = str(func._overloadpacket.__name__).split(".")[-1]
        stem = base[:-1] if base.endswith("_") else base
        written = tuple(i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)
        view = not schema.is_mutable and any(r.alias_info is not None for r in schema.returns)
        movement = is_movement(stem)
        view = view or stem in ALIAS_BY_BEHAVIOUR
        grouped = func is torch.ops.aten._grouped_mm.default
        attention = kernel_of(func)
        return cls(
            stem, view, written, stem in OVERWRITES, stem in GATHERS, movement, stem in LAYOUT_ONLY, grouped, attention
        )


@dataclass
class StorageBook:
    """Live storages the run allocated: serial, bytes; the live total; frames watching their peaks."""

    live: dict[int, tuple[int, int]] = field(default_factory=dict)  # storage cdata -> (serial, nbytes)
    live_bytes: int = 0
    serial: int = 0
    watchers: list[Any] = field(default_factory=list)  # objects with .peak_live (active stage frames, innermost last)

    def allocated(self, t: torch.Tensor) -> int | None:
        """Register ``t``'s storage if it is new; its serial (None for storages made before the run)."""
        s = t.untyped_storage()
        key = s._cdata
        hit = self.live.get(key)
        if hit is not None:
            return hit[0]
        self.serial += 1
        nbytes = s.nbytes()
        self.live[key] = (self.serial, nbytes)
        weakref.finalize(s, self._freed, key, self.serial)
        self.live_bytes += nbytes
        if self.watchers:  # the innermost active stage: one nested in another (the official vision stack runs
            w = self.watchers[-1]  # inside the decoder's forward) raises its own peak, not its parent's
            if self.live_bytes > w.peak_live:
                w.peak_live = self.live_bytes
        return self.serial

    def _freed(self, key: int, serial: int) -> None:
        hit = self.live.get(key)
        if hit is not None and hit[0] == serial:
            del self.live[key]
            self.live_bytes -= hit[1]

    def serial_of(self, t: torch.Tensor) -> int | None:
        hit = self.live.get(t.untyped_storage()._cdata)
        return None if hit is None else hit[0]


@dataclass
class _Traffic:
    """One op's bytes, accumulated by the steps of `OpMeter.measure`."""

    read_bytes: int = 0
    weight_bytes: int = 0
    write_bytes: int = 0
    reads: list[tuple[int, int]] = field(default_factory=list)  # (storage serial, bytes) of run-allocated inputs
    writes: list[int] = field(default_factory=list)  # serials of run-allocated storages written


@dataclass
class Measured:
    """One op's metrics, and what the KV-cache attribution needs."""

    vector: list[int]
    read_serials: list[tuple[int, int]]  # (storage serial, bytes read) of run-allocated inputs
    write_serials: list[int]
    experts_hit: int | None = None  # a top-k's distinct selected indices (a MoE router's routing)


@dataclass
class OpMeter:
    """Measures ops (module docstring); ``weights``: storage cdatas of parameters and buffers."""

    weights: frozenset[int]
    book: StorageBook = field(default_factory=StorageBook)
    suspended: int = 0  # > 0 inside a fused attention call: its internals are not metered
    no_convention: set[str] = field(default_factory=set)
    alias_mismatch: set[str] = field(default_factory=set)
    foreign: dict[Any, Any] = field(default_factory=dict)  # overload packet -> `vendor_shim.foreign_ops.ForeignOp`
    topk_routing: bool = True  # a top-k's selection is a MoE router's routing (False: a foreign MoE kernel says)
    _kinds: dict[Any, _OpKind] = field(default_factory=dict)

    def _kind(self, func: Any) -> _OpKind:
        kind = self._kinds.get(func)
        if kind is None:
            kind = self._kinds[func] = _OpKind.of(func)
        return kind

    def moves_nothing(self, func: Any) -> bool:
        """The op's vector is all zeros by definition (a view, or inside a kernel charged whole): only its call
        counts.  The audit's fast path for ~45 % of a decode step's ops."""
        return self._kind(func).view or self.suspended > 0

    def measure(
        self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, flops: int
    ) -> Measured:
        """The op's vector with ``flops`` (the counter's formula) as its tensor FLOPs."""
        kind = self._kind(func)
        vec = [0] * len(TRAFFIC)
        vec[TENSOR] = flops
        if kind.view or self.suspended:
            return Measured(vec, [], [])
        foreign = self.foreign.get(func._overloadpacket) if self.foreign else None
        if foreign is not None:
            return self._foreign(foreign, args, kwargs, out, flops)
        outs = [o for _, o in _tensors(out if isinstance(out, tuple | list) else (out,))]
        if kind.attention is not None and outs:  # a kernel called directly (flash-attn, flash_attention_2)
            return self._attention(attention_call(kind.attention, args, kwargs), outs[0], flops)
        ins = list(_tensors((*args, *kwargs.values())))
        out_fp = [footprint(o) for o in outs]
        traffic = _Traffic()
        in_keys = self._read_inputs(kind, ins, args, kwargs, sum(out_fp), traffic)
        self._write_in_place(kind, args, traffic)
        if not kind.written:
            self._write_outputs(name, outs, out_fp, in_keys, traffic)
        vec[ELEMENTWISE] = self._elementwise(kind, name, args, ins[0][1] if ins else None, outs, flops)
        vec[READ] = traffic.read_bytes
        vec[WRITE] = traffic.write_bytes
        vec[WEIGHT] = traffic.weight_bytes
        return Measured(vec, traffic.reads, traffic.writes, _experts_hit(kind, outs) if self.topk_routing else None)

    def _foreign(self, op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, flops: int) -> Measured:
        """A backend's own kernel (`vendor_shim.foreign_ops`): its declared charge; the tensors it returns are new
        storages of the run (liveness)."""
        c = op.charge(args, kwargs, out)
        vec = [0] * len(TRAFFIC)
        vec[TENSOR] = flops
        vec[ELEMENTWISE] = c.elementwise_flops
        vec[READ] = c.read_bytes
        vec[WRITE] = c.write_bytes
        vec[WEIGHT] = c.weight_bytes
        vec[KV] = c.kv_cache_bytes
        writes = [s for s in (self.book.allocated(o) for o in c.outputs) if s is not None]
        return Measured(vec, [], writes, c.experts_hit)

    def _read_inputs(
        self,
        kind: _OpKind,
        ins: list[tuple[int, torch.Tensor]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out_bytes: int,
        traffic: _Traffic,
    ) -> set[int]:
        """Adds the tensor inputs' reads (an argument written in place is charged by `_write_in_place`); returns
        the inputs' storage keys."""
        in_keys: set[int] = set()
        for pos, t in ins:
            key = t.untyped_storage()._cdata
            in_keys.add(key)
            if pos in kind.written or kind.layout_only:
                continue  # counted as written (and read unless the op overwrites it); or never read
            b = out_bytes if kind.gather and pos == 0 else footprint(t)
            if kind.grouped_mm and pos == 1:
                b = _grouped_weight_read(t, args, kwargs)
            traffic.read_bytes += b
            if key in self.weights:
                traffic.weight_bytes += b
            else:
                serial = self.book.live.get(key)
                if serial is not None:
                    traffic.reads.append((serial[0], b))
        return in_keys

    def _write_in_place(self, kind: _OpKind, args: tuple[Any, ...], traffic: _Traffic) -> None:
        """Adds the writes of the arguments the op mutates, and their reads unless it overwrites them."""
        for pos in kind.written:
            t = args[pos] if pos < len(args) else None
            if isinstance(t, torch.Tensor):
                wb = _written_bytes(kind, t, args)
                traffic.write_bytes += wb
                if not kind.overwrite:
                    traffic.read_bytes += wb
                serial = self.book.serial_of(t)
                if serial is not None:
                    traffic.writes.append(serial)

    def _write_outputs(
        self, name: str, outs: list[torch.Tensor], out_fp: list[int], in_keys: set[int], traffic: _Traffic
    ) -> None:
        """Adds the writes of the op's new outputs (registering their storages); an output on an input's storage
        is a view the schema did not announce: noted, not charged."""
        for o, fp in zip(outs, out_fp, strict=True):
            if o.untyped_storage()._cdata in in_keys:
                self.alias_mismatch.add(name)
                continue
            traffic.write_bytes += fp
            serial = self.book.allocated(o)
            if serial is not None:
                traffic.writes.append(serial)

    def _elementwise(
        self,
        kind: _OpKind,
        name: str,
        args: tuple[Any, ...],
        first_in: torch.Tensor | None,
        outs: list[torch.Tensor],
        flops: int,
    ) -> int:
        """The op's elementwise FLOPs: a tensor op's fused bias add, else the convention (none: noted, 0)."""
        floating = (first_in is not None and first_in.is_floating_point()) or any(o.is_floating_point() for o in outs)
        if floating and flops:
            return _fused_bias_add(kind.base, args, outs)
        if floating and not kind.movement:
            in_elems = first_in.numel() if first_in is not None else 0
            ew = elementwise_flops(kind.base, sum(o.numel() for o in outs), in_elems)
            if ew is not None:
                return ew
            self.no_convention.add(name)
        return 0

    def fused_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, causal: bool, out: torch.Tensor
    ) -> Measured:
        """The fused op's metrics (conventions): reads q, k, v, mask; writes out; softmax (+ mask) per score."""
        scores = math.prod(q.shape[:-1]) * k.shape[-2]
        ins = [q, k, v] + ([mask] if isinstance(mask, torch.Tensor) else [])
        return self._charge_attention(ins, out, scores, mask is not None or causal, 0)

    def _attention(self, call: AttentionCall, out: torch.Tensor, flops: int) -> Measured:
        """An attention kernel called outside `F.scaled_dot_product_attention`, charged as the fused op: reads q,
        k, v, its masks and its index tensors (cumulative lengths); writes its attention output (not its
        logsumexp, RNG state or debug outputs, which the fused op never returns); softmax (+ mask) per score."""
        ins = [call.query, call.key, call.value, *call.masks, *call.index]
        return self._charge_attention(ins, out, call.scores, call.masked, flops)

    def _charge_attention(
        self, ins: list[torch.Tensor], out: torch.Tensor, scores: int, masked: bool, flops: int
    ) -> Measured:
        vec = [0] * len(TRAFFIC)
        vec[TENSOR] = flops
        read_bytes = sum(footprint(t) for t in ins)
        reads = []
        for t in ins:
            hit = self.book.live.get(t.untyped_storage()._cdata)
            if hit is not None:
                reads.append((hit[0], footprint(t)))
        per = ATTENTION_SOFTMAX + (ATTENTION_MASK if masked else 0)
        serial = self.book.allocated(out)
        vec[ELEMENTWISE] = per * scores
        vec[READ] = read_bytes
        vec[WRITE] = footprint(out)
        vec[WEIGHT] = sum(footprint(t) for t in ins if t.untyped_storage()._cdata in self.weights)
        return Measured(vec, reads, [] if serial is None else [serial])


def _experts_hit(kind: _OpKind, outs: list[torch.Tensor]) -> int | None:
    """A top-k's distinct selected indices (a MoE router's routing); None for other ops and on meta."""
    if kind.base == "topk" and len(outs) == 2 and outs[1].device.type != "meta":
        return int(outs[1].unique().numel())
    return None


def _fused_bias_add(base: str, args: tuple[Any, ...], outs: list[torch.Tensor]) -> int:
    """A tensor op that adds a bias in its kernel (addmm, baddbmm, convolution with bias): 1 per output element."""
    if base in BIAS_IN_KERNEL and _bias_given(base, args):
        return sum(o.numel() for o in outs)
    return 0


def _bias_given(base: str, args: tuple[Any, ...]) -> bool:
    pos = BIAS_IN_KERNEL[base]
    return len(args) > pos and isinstance(args[pos], torch.Tensor)


def _written_bytes(kind: _OpKind, dest: torch.Tensor, args: tuple[Any, ...]) -> int:
    """index_put_ writes the elements its indices address (the values broadcast to them: ``mask[rows, cols] = 0.0``
    writes len(rows) x len(cols) elements from one value); every other in-place op its whole destination."""
    if kind.base in ("index_put", "_index_put_impl") and len(args) > 2 and isinstance(args[2], torch.Tensor):
        addressed = _indexed_elements(dest, args[1])
        elems = args[2].numel() if addressed is None else max(addressed, args[2].numel())
        return min(footprint(dest), elems * dest.element_size())
    return footprint(dest)


def _indexed_elements(dest: torch.Tensor, indices: Any) -> int | None:
    """Elements an advanced-indexing write addresses: the broadcast shape of its integer index tensors times the
    destination's sizes after the indexed dimensions.  None where a bool mask (how many it selects is data) or a
    slice takes part: then the values' size stands (they must match what is selected)."""
    if not isinstance(indices, list | tuple) or not indices:
        return None
    if not all(isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool for t in indices):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in indices))
    return math.prod(shape) * math.prod(dest.shape[len(indices) :])


def _grouped_weight_read(b: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """`_grouped_mm(a, b, offs)` with a stacked 3D weight reads only the groups that got rows."""
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    if b.dim() != 3 or not isinstance(offs, torch.Tensor) or offs.device.type == "meta" or not offs.numel():
        return footprint(b)
    ends = offs.tolist()
    hit = sum(1 for i, e in enumerate(ends) if e > (ends[i - 1] if i else 0))
    return footprint(b) // b.shape[0] * hit


class FusedAttention(TorchFunctionMode):
    """Charges `F.scaled_dot_product_attention` as one op (conventions) and hides its kernel's internals."""

    def __init__(self, meter: OpMeter, charge: Callable[[str, Measured], None]) -> None:
        super().__init__()
        self.meter = meter
        self.charge = charge

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention or self.meter.suspended:
            return func(*args, **kwargs)  # (suspended: inside a kernel charged as a whole, e.g. a foreign op)
        q, k, v = (args + (None,) * 3)[:3]
        q = kwargs.get("query", q)
        k = kwargs.get("key", k)
        v = kwargs.get("value", v)
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        causal = bool(kwargs.get("is_causal", args[5] if len(args) > 5 else False))
        self.meter.suspended += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.meter.suspended -= 1
        self.charge(FUSED_ATTENTION, self.meter.fused_attention(q, k, v, mask, causal, out))
        return out
