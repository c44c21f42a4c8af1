"""Coverage audit: every aten op executed, classified, and attributed to a stage leaf.

`AuditMode` is the run's one `TorchDispatchMode`: it decomposes what torch's counter would decompose (an op
without a formula that has a CompositeImplicitAutograd kernel), so it sees exactly the leaf ops a
`FlopCounterMode` would count, evaluates the counter's formula (the same ``flop_registry``, custom mapping
included) and charges the FLOPs to the innermost active stage frame of a `StageTracker`.  The stock
`FlopCounterMode` itself can be stacked above it (``cross_check``, `vendor_shim.harness`): then the harness asserts
its own total equals the audit's and the stage sum.  Left out by default: it costs ~30 ms of a ~75 ms decode step
(docs/measurements.md).

Attention kernels (SDPA's CPU/CUDA kernels, the (B, S, H, D) flash/efficient kernels, flash-attn 2's
``flash_attn::`` / ``flashattn::`` custom ops) are handled by formulas from one table,
`vendor_shim.attention_kernels.KERNELS`; flash-attn's ops get theirs when that package has registered them
before the run's counter is built (importing the model does), and an attention op met without one is uncounted
by rule 1 below.

Classification of an op without a formula (most conservative first):

1. its name looks like tensor-core work (`SUSPICIOUS_FRAGMENTS`: mm, matmul, conv,
   attention, ...) -> **uncounted**, always;
2. it touches no floating-point tensor -> ``non_float`` (integer/bool bookkeeping);
3. it is on `core.op_rules.ALLOWED_OPS` (elementwise, reductions, softmax, norms, copies, views,
   interpolation, embedding/index ops, ...: work the project reports as
   ``elementwise_flops``, never as ``tensor_flops``; each category's reason is in
   `core.op_rules.CATEGORIES`) -> ``allowed:<category>``;
4. anything else -> **uncounted**: an op nobody has looked at yet is assumed to hide
   tensor FLOPs until it is added to a formula or to the allow-list with a reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.op_rules import ALLOWED_OPS
from vendor_shim.op_meter import OpMeter

_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd

SUSPICIOUS_FRAGMENTS = (
    "mm",
    "matmul",
    "conv",
    "attention",
    "flash",
    "linear",
    "einsum",
    "gemm",
    "bmm",
    "addmv",
    "addr",
    "dot",
    "tensordot",
    "lstm",
    "gru",
    "rnn",
    "mha",
    "multi_head",
    "_mv",
)


def op_base_name(func: Any) -> str:
    """'aten.addmm.default' -> 'addmm'; 'transformers.grouped_mm_fallback.default' -> 'grouped_mm_fallback'."""
    packet = getattr(func, "_overloadpacket", func)
    return str(getattr(packet, "__name__", packet)).split(".")[-1]


def op_namespace(func: Any) -> str:
    return str(getattr(func, "namespace", "aten"))


def op_full_name(func: Any) -> str:
    """The overload's qualified name, e.g. 'aten.mm.default'."""
    return str(func)


# Names that match a fragment above but are known not to be tensor-core work.
NAME_FALSE_POSITIVES = frozenset({"upsample_linear1d"})


def _is_suspicious(base: str) -> bool:
    b = base.lower().strip("_")
    return b not in NAME_FALSE_POSITIVES and any(frag in b for frag in SUSPICIOUS_FRAGMENTS)


def classify(func: Any, has_formula: bool, touches_float: bool, foreign_category: str | None = None) -> str:
    """'counted' | 'uncounted' | 'non_float' | 'allowed:<category>' (see module docstring); ``foreign_category``:
    the category a backend declared for its own op (`vendor_shim.foreign_ops`), whose charge is complete."""
    if has_formula:
        return "counted"
    if foreign_category is not None:
        return "allowed:" + foreign_category
    base = op_base_name(func)
    if _is_suspicious(base):
        return "uncounted"
    if not touches_float:
        return "non_float"
    name = base[:-1] if base.endswith("_") and base[:-1] in ALLOWED_OPS else base
    if op_namespace(func) == "aten" and name in ALLOWED_OPS:
        return "allowed:" + ALLOWED_OPS[name]
    return "uncounted"


def _touches_float(args: Any, kwargs: Any, out: Any) -> bool:
    """A floating (or complex) tensor among the op's arguments or results (asked on every call of an integer op)."""
    stack = [args, kwargs, out]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() or x.is_complex():
                return True
        elif isinstance(x, list | tuple):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return False


@dataclass
class OpStats:
    calls: int = 0
    flops: int = 0
    klass: str = ""


@dataclass
class AuditLog:
    """Everything the audit saw; filled by `AuditMode`."""

    ops: dict[str, OpStats] = field(default_factory=dict)  # full op name -> stats (whole run)
    total_flops: int = 0
    no_convention: list[str] = field(default_factory=list)  # float ops without an elementwise convention
    alias_mismatch: list[str] = field(default_factory=list)  # ops returning a view their schema did not announce

    def add_op(self, name: str, calls: int, flops: int, klass: str) -> None:
        """An op's calls and FLOPs counted elsewhere (stored decode steps, `vendor_shim.decode_splice`): an op seen
        on integers only so far takes the class it had on floats."""
        st = self.ops.get(name)
        if st is None:
            st = self.ops[name] = OpStats(klass=klass)
        elif st.klass == "non_float" and klass != "non_float":
            st.klass = klass
        st.calls += calls
        st.flops += flops
        self.total_flops += flops

    def uncounted(self) -> list[str]:
        return sorted(name for name, st in self.ops.items() if st.klass == "uncounted")


class AuditMode(TorchDispatchMode):
    """Records every op, evaluates its formula, meters it, and charges the result via ``charge(op_name, measured)``."""

    def __init__(
        self,
        registry: dict[Any, Any],
        charge: Callable[[str, Any], None],
        log: AuditLog,
        meter: OpMeter | None = None,
        execute: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] | None = None,
        count_call: Callable[[str], None] | None = None,
    ) -> None:
        """``meter``: every other metric of the op (default: a meter that knows no weights).  ``execute(func, args,
        kwargs)`` runs the op (default: the kernel itself; `vendor_shim.hollow` answers counted ops with shapes
        only).  Being the bottom mode, the audit sees the op either way.  ``count_call(op_name)``: charges an op
        whose vector is zeros by definition (`OpMeter.moves_nothing`) as one call, without measuring it."""
        super().__init__()
        self.execute = execute
        self.count_call = count_call
        self.registry = registry
        self.charge = charge
        self.log = log
        self.meter = OpMeter(weights=frozenset()) if meter is None else meter
        self._names: dict[Any, str] = {}  # str(func) is slow and asked ~1,000 times per decoder forward
        self._decomposable: dict[Any, bool] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Never compiled: torch's disable-dynamo wrapper around every dispatch costs microseconds an op."""
        return False

    def _decomposes(self, func: Any) -> bool:
        """What `FlopCounterMode` decomposes: an op without a formula that has a CompositeImplicitAutograd kernel."""
        hit = self._decomposable.get(func)
        if hit is None:
            hit = self._decomposable[func] = func is not torch.ops.prim.device.default and (
                _COMPOSITE in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE)
            )
        return hit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = self.registry.get(packet)
        if formula is None and self._decomposes(func):
            with self:  # its parts come back through this mode, as under the counter
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        foreign = self.meter.foreign.get(packet) if self.meter.foreign else None
        if foreign is not None:  # charged as a whole: what its own code calls (an SDPA inside) is not charged again
            self.meter.suspended += 1
        try:
            out = func(*args, **kwargs) if self.execute is None else self.execute(func, args, kwargs)
        finally:
            if foreign is not None:
                self.meter.suspended -= 1
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = op_full_name(func)
        st = self.log.ops.get(name)
        if st is None:
            st = self.log.ops[name] = OpStats(
                klass=classify(
                    func,
                    formula is not None,
                    _touches_float(args, kwargs, out),
                    foreign.category if foreign is not None else None,
                )
            )
        elif st.klass == "non_float" and _touches_float(args, kwargs, out):  # same op, now on floats
            st.klass = classify(func, formula is not None, True)
        st.calls += 1
        flops = 0
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            st.flops += flops
            self.log.total_flops += flops
        if not flops and self.count_call is not None and self.meter.moves_nothing(func):
            self.count_call(name)
        else:
            self.charge(name, self.meter.measure(func, name, args, kwargs, out, flops))
        return out


def ops_by_class(log: AuditLog) -> dict[str, dict[str, int]]:
    """op name -> {'calls', 'flops', 'class'} for the trace."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, st in sorted(log.ops.items()):
        out[name] = {"calls": st.calls, "flops": st.flops, "class": st.klass}
    return dict(out)
