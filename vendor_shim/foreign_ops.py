"""Ops outside aten that a backend's code calls (vLLM's ``_C.*`` kernels and ``vllm.*`` custom ops), each with its
complete charge.

A fused kernel hides its internals from the dispatcher: the audit sees one op where eager PyTorch shows a dozen, and
its arguments may not even carry what it reads (vLLM's linear weight is an opaque oneDNN handle; its paged attention
finds the K/V cache and the sequence lengths in the forward context, not in its arguments).  So a backend that runs
such code declares each op once, as a `ForeignOp`: its tensor FLOPs (handed to `FlopCounterMode` as a formula, so the
counter and the audit agree) and its traffic at the kernel's boundary -- what it reads and writes, of weights and of
the K/V cache -- computed from its arguments and, where the kernel takes them from elsewhere, from the state it reads
them from.  An op without an entry stays what the audit makes of any unknown op: uncounted, the page incomplete.

The harness takes a backend's table through `VendorBackend.foreign_ops()` (empty by default: the aten-only backends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from vendor_shim.op_meter import footprint


@dataclass(frozen=True)
class ForeignCharge:
    """One call's metrics (`core.metrics.TRAFFIC` entries) and the new tensors it returned (for liveness)."""

    tensor_flops: int = 0
    elementwise_flops: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    weight_bytes: int = 0
    kv_cache_bytes: int = 0
    outputs: tuple[torch.Tensor, ...] = ()
    experts_hit: int | None = None  # a fused MoE kernel: the distinct experts whose weights it read (the routing)


@dataclass(frozen=True)
class ForeignOp:
    """One op of a backend's own library: where it lives, what kind of work it is, and its charge."""

    namespace: str  # torch.ops.<namespace>
    name: str  # torch.ops.<namespace>.<name>
    category: str  # the audit's class for it ("counted" when it has tensor FLOPs, else "allowed:<category>")
    charge: Callable[[tuple[Any, ...], dict[str, Any], Any], ForeignCharge]  # (args, kwargs, out) -> its charge
    tensor_work: bool = False  # its charge can carry tensor FLOPs: the counter gets a formula for it
    routing: bool = False  # a fused MoE kernel: its charge reports the experts hit, the routing of the run

    @property
    def qualified(self) -> str:
        return f"{self.namespace}::{self.name}"

    def packet(self) -> Any | None:
        """The op's overload packet once its library has registered it, else None (no import side effects)."""
        try:
            return getattr(getattr(torch.ops, self.namespace), self.name)
        except (AttributeError, RuntimeError):
            return None

    def flop_formula(self) -> Callable[..., int]:
        """The counter's formula: the charge's tensor FLOPs, from the op's real arguments."""

        def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            return self.charge(args, kwargs, out_val).tensor_flops

        formula._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes the real tensors
        return formula


@dataclass(frozen=True)
class ForeignOps:
    """A backend's table of foreign ops, keyed by overload packet for the ones that exist in this process."""

    ops: tuple[ForeignOp, ...] = ()

    def by_packet(self) -> dict[Any, ForeignOp]:
        out: dict[Any, ForeignOp] = {}
        for op in self.ops:
            packet = op.packet()
            if packet is not None:
                out[packet] = op
        return out

    def flop_formulas(self) -> dict[Any, Callable[..., int]]:
        """Formulas for `FlopCounterMode(custom_mapping=...)`: the ops that can carry tensor FLOPs."""
        return {packet: op.flop_formula() for packet, op in self.by_packet().items() if op.tensor_work}

    @property
    def reports_routing(self) -> bool:
        """Whether the backend's MoE kernel reports its routing (then top-k ops are not read as routers: a grouped
        top-k runs one over the expert groups first)."""
        return any(op.routing for op in self.ops)

    def names(self) -> list[str]:
        return sorted(op.qualified for op in self.ops)


NO_FOREIGN_OPS = ForeignOps()


def total_bytes(ts: Iterable[torch.Tensor | None]) -> int:
    """Bytes a fused kernel addresses in these arguments (`vendor_shim.op_meter.footprint`; None counts 0)."""
    return sum(footprint(t) for t in ts if t is not None)
