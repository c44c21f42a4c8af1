"""Stage attribution: forward hooks on the backend's stage roots.

A stack of frames, one per active root call; FLOPs charged by the audit go to the
innermost frame (roots may nest).  Vision branches come from the shape of the pixels a vision root receives;
prefill vs decode from the index of the ``top`` module's forward call (0 = prefill,
1..K = decode steps).  Everything the hooks cannot explain raises
`VendorRunError` at once: a wrong attribution must never turn into a silent number.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from core.metrics import TRAFFIC
from core.schema import LM_STAGES
from vendor_shim.backends.base import StageRoots
from vendor_shim.device_memory import AllocatorPeaks, AllocatorProbe
from vendor_shim.errors import VendorRunError
from vendor_shim.op_meter import KV, TENSOR, Measured, StorageBook

UNATTRIBUTED = ("unattributed", "-")


@dataclass
class CallRecord:
    """One forward call of a stage root."""

    index: int
    root: str  # a vision stage of the family (sam | clip | qwen2_encoder | projector) | decoder | lm_head
    module: str  # qualified name inside the model
    stage: str  # trace stage: a vision stage | prefill | decode
    part: str  # global | crops | decoder | lm_head
    step: int  # 0 for vision and prefill, t = 1..K for decode
    input_shapes: list[list[Any]]  # [[arg name, shape], ...] for tensor inputs
    tensor_flops: int = 0
    ops: dict[str, int] = field(default_factory=dict)  # op name -> flops
    entry_live: int = 0  # live run-allocated bytes when the call began
    peak_live: int = 0  # their high-water mark during the call (StorageBook raises it)
    allocator_peak_bytes: int | None = None  # CUDA caching allocator's high-water mark above entry (None off cuda)
    wall_s: float = 0.0  # the call's wall time (on cuda synchronized at both ends: device time)
    started: float = 0.0
    on_allocator: bool = False  # the allocator probe was entered for this call

    @property
    def peak_bytes(self) -> int:
        return self.peak_live - self.entry_live

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "root": self.root,
            "module": self.module,
            "stage": self.stage,
            "part": self.part,
            "step": self.step,
            "input_shapes": self.input_shapes,
            "tensor_flops": self.tensor_flops,
            "peak_bytes": self.peak_bytes,
            "allocator_peak_bytes": self.allocator_peak_bytes,
            "wall_s": self.wall_s,
            "ops": self.ops,  # not a copy: nothing adds to a call's ops after it returned, and a stored step's calls
            # share one dict with every page given that step (report tables then see one object, not 1,355)
        }


def _tensor_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[list[Any]]:
    out: list[list[Any]] = [[f"arg{i}", list(a.shape)] for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    out += [[k, list(v.shape)] for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    return out


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def cache_tensors(output: Any) -> list[torch.Tensor]:
    """The K/V cache a model forward returns (``cache`` from transformers 5.24, ``past_key_values`` before, which
    5.24 still answers with a deprecation warning): transformers 5 `DynamicCache` layers, 4.46 `DynamicCache` lists,
    or legacy tuples."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    if cache is None and isinstance(output, tuple) and len(output) > 1:
        cache = output[1]
    if cache is None:
        return []
    if hasattr(cache, "layers"):
        return [
            t
            for layer in cache.layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, torch.Tensor)
        ]
    if hasattr(cache, "key_cache"):
        return [t for t in (*cache.key_cache, *cache.value_cache) if isinstance(t, torch.Tensor)]
    out: list[torch.Tensor] = []
    stack = [cache]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return out


@dataclass
class TrackerState:
    """What a finished run's tracker leaves for the checks and the assembly: plain data, detached from the hooks and
    the storage book (so a run's vision and prefill can be kept and given to the next page of that signature)."""

    leaf_ops: dict[tuple[str, str, int], dict[str, list[int]]]
    records: list[CallRecord]
    kv_resident: list[int]
    experts_hit: dict[int, list[int]]
    top_calls: int
    allocator: AllocatorPeaks | None  # None off cuda
    # decode step t -> the stored record it was given (`decode_splice`): the record's leaf metrics and trace entry,
    # computed once for every page it is given to, stand for adding its cells and calls up again
    stored_steps: dict[int, Any] = field(default_factory=dict)
    # their cells summed at once (`vendor_shim.decode_steps.StepSums`), when the splice was given the sums: the
    # assembly adds these instead of each stored step's cells
    stored_sums: Any = None


class StageTracker:
    """Hooks the roots of one model; collects per-call records and per-leaf op metrics."""

    def __init__(
        self,
        roots: StageRoots,
        *,
        global_view_size: int,
        crop_size: int,
        n_crops: int,
        book: StorageBook,
        module_names: dict[int, str] | None = None,
        allocator: AllocatorProbe | None = None,
    ) -> None:
        """``allocator``: the CUDA caching allocator's counters (`vendor_shim.device_memory`), read at the entry and
        exit of every root call whose input is on cuda; None on cpu and meta."""
        self.roots = roots
        self.allocator = AllocatorPeaks(allocator) if allocator is not None else None
        self.book = book
        self.global_view_size = global_view_size
        self.crop_size = crop_size
        self.n_crops = n_crops
        self.names = module_names or {}
        self.frames: list[CallRecord] = []
        book.watchers = self.frames  # allocations raise the peak of the innermost active frame
        self.records: list[CallRecord] = []
        self.kv_pending: list[tuple[tuple[str, str, int], str, Measured]] = []  # LM-stage reads of this forward
        self.kv_resident: list[int] = []  # cache bytes after each forward
        self.experts_hit: dict[int, list[int]] = defaultdict(list)  # forward (0 = prefill) -> per MoE router call
        self.top_calls = 0
        self.top_depth = 0
        self.last_view: tuple[str, int] | None = None  # (branch, batch) of the last call that saw the pixels
        self.first_vision = next(iter(roots.vision), None)
        # (stage, part, step) -> op name -> [*core.metrics.TRAFFIC, calls]
        self.leaf_ops: dict[tuple[str, str, int], dict[str, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0] * (len(TRAFFIC) + 1))
        )

    def state(self) -> TrackerState:
        return TrackerState(
            self.leaf_ops, self.records, self.kv_resident, self.experts_hit, self.top_calls, self.allocator
        )

    # ---- attribution -----------------------------------------------------------------
    def charge(self, op_name: str, measured: Measured) -> None:
        vec = measured.vector
        flops = vec[TENSOR]
        if self.frames:
            fr = self.frames[-1]
            fr.tensor_flops += flops
            if flops:
                fr.ops[op_name] = fr.ops.get(op_name, 0) + flops
            key = (fr.stage, fr.part, fr.step)
            if fr.stage in LM_STAGES:
                if measured.read_serials:
                    self.kv_pending.append((key, op_name, measured))
                if measured.experts_hit is not None:
                    self.experts_hit[fr.step].append(measured.experts_hit)
        else:
            key = (*UNATTRIBUTED, self.top_calls - 1 if self.top_depth else -1)
        cell = self.leaf_ops[key][op_name]
        for i, v in enumerate(vec):
            cell[i] += v
        cell[-1] += 1

    def count_call(self, op_name: str) -> None:
        """`charge` of an op whose vector is all zeros: only its call is counted."""
        if self.frames:
            fr = self.frames[-1]
            key = (fr.stage, fr.part, fr.step)
        else:
            key = (*UNATTRIBUTED, self.top_calls - 1 if self.top_depth else -1)
        self.leaf_ops[key][op_name][-1] += 1

    def _settle_kv(self, output: Any) -> None:
        """Charge this forward's reads of its returned cache (module docstring of `vendor_shim.op_meter`)."""
        cache = cache_tensors(output)
        serials = {s for s in map(self.book.serial_of, cache) if s is not None}
        distinct = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in cache}
        self.kv_resident.append(sum(distinct.values()))
        for key, op_name, m in self.kv_pending:
            if serials.intersection(m.write_serials):
                continue  # the cache update: its copies are io_bytes, not cache reads
            kv = sum(b for s, b in m.read_serials if s in serials)
            if kv:
                self.leaf_ops[key][op_name][KV] += kv
        self.kv_pending.clear()

    def _vision_branch(self, root: str, x: torch.Tensor | None) -> str:
        """The branch of one vision root call: decided by its input when that is the pixels (always so for the
        family's first vision stage), else the branch of the call that decided last (same batch)."""
        if x is None:
            raise VendorRunError(f"{root} was called without a tensor input: cannot attribute its branch")
        batch = int(x.shape[0])
        if root == self.first_vision or (x.dim() == 4 and int(x.shape[1]) == 3):
            side = tuple(int(s) for s in x.shape[-2:])
            if batch == 1 and side == (self.global_view_size,) * 2:
                branch = "global"
            elif self.n_crops and batch == self.n_crops and side == (self.crop_size,) * 2:
                branch = "crops"
            else:
                raise VendorRunError(
                    f"{root} input {tuple(x.shape)} is neither the global view (1 x {self.global_view_size}^2) "
                    f"nor the crop batch ({self.n_crops} x {self.crop_size}^2): the inputs disagree with the workload"
                )
            self.last_view = (branch, batch)
            return branch
        if self.last_view is None:
            raise VendorRunError(f"{root} ran before any vision root received the pixels: cannot attribute its branch")
        branch, view_batch = self.last_view
        if batch != view_batch:
            raise VendorRunError(f"{root} input batch {batch} != the view batch {view_batch} ({branch})")
        return branch

    def _pre(self, root: str, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        step = max(self.top_calls - 1, 0)
        if root in self.roots.vision:
            if self.top_depth and self.top_calls > 1:
                raise VendorRunError(f"{root} ran during decode step {self.top_calls - 1}: the vision stack re-ran")
            stage, part, step = root, self._vision_branch(root, _first_tensor(args, kwargs)), 0
        else:
            if not self.top_depth:
                raise VendorRunError(f"{root} ran outside a generation step: cannot tell prefill from decode")
            stage = "prefill" if self.top_calls == 1 else "decode"
            part = root
        rec = CallRecord(
            index=len(self.records) + len(self.frames),
            root=root,
            module=self.names.get(id(module), type(module).__name__),
            stage=stage,
            part=part,
            step=step,
            input_shapes=_tensor_shapes(args, kwargs),
            entry_live=self.book.live_bytes,
            peak_live=self.book.live_bytes,
        )
        first = _first_tensor(args, kwargs)
        if self.allocator is not None and first is not None and first.device.type == self.allocator.probe.device_type:
            self.allocator.probe.synchronize()  # what ran before this root is not its time
            self.allocator.enter()
            rec.on_allocator = True
        rec.started = time.perf_counter()
        self.frames.append(rec)

    def _post(self, root: str) -> None:
        if not self.frames or self.frames[-1].root != root:
            raise VendorRunError(f"stage hooks out of order at the end of {root}: nested roots closed unevenly")
        rec = self.frames.pop()
        if rec.on_allocator and self.allocator is not None:
            self.allocator.probe.synchronize()
            rec.allocator_peak_bytes = self.allocator.exit()
        rec.wall_s = time.perf_counter() - rec.started
        self.records.append(rec)

    def _top_pre(self, *_: Any) -> None:
        if self.top_depth == 0:
            self.top_calls += 1
        self.top_depth += 1

    def _top_post(self, module: Any, args: Any, output: Any) -> None:
        self.top_depth -= 1
        if self.top_depth == 0:
            self._settle_kv(output)

    @contextmanager
    def attached(self) -> Iterator[StageTracker]:
        handles = []
        try:
            for root, mod in self.roots.named().items():
                handles.append(
                    mod.register_forward_pre_hook(
                        lambda m, a, k, r=root: self._pre(r, m, a, k), with_kwargs=True, prepend=True
                    )
                )
                handles.append(mod.register_forward_hook(lambda m, a, o, r=root: self._post(r), always_call=True))
            if self.roots.top is not None:
                handles.append(self.roots.top.register_forward_pre_hook(self._top_pre, prepend=True))
                handles.append(self.roots.top.register_forward_hook(self._top_post, always_call=True))
            yield self
        finally:
            for h in handles:
                h.remove()
