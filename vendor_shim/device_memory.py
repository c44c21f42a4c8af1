"""The CUDA caching allocator's view of a stage's peak, and the stage's wall time on the device.

Next to the tensor-level ``peak_bytes`` (live tensor storages, `vendor_shim.op_meter.StorageBook`) a CUDA run
records, per stage-root call, ``allocator_peak_bytes``: ``torch.cuda.max_memory_allocated()`` at the call's exit
minus ``torch.cuda.memory_allocated()`` at its entry, with ``torch.cuda.reset_peak_memory_stats()`` at entry.  It
is reported, never gated.  The allocator counts each block at its rounded size (a multiple of 512 bytes), so it
reads at or above the tensor-level figure; it also sees what the tensor book never does (kernel workspaces,
cuBLAS/cuDNN scratch allocated through the caching allocator, tensors of a fused kernel's internals).

Nested roots follow the tensor-level rule: while a nested root runs, its own peak rises, not its parent's; what
it leaves allocated counts for the parent.  The allocator has one global high-water mark, so entering a nested
root first folds the mark so far into the parent, then resets it; leaving it folds the level it left into the
parent and resets again.

The probe is injected (`AllocatorProbe`), so the logic runs on CPU with a fake allocator in the tests; on CPU and
meta no probe exists and the figure is null.  ``synchronize`` runs at every stage boundary on CUDA so a stage's
``wall_s`` is the device time of its kernels, not the time to queue them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AllocatorProbe:
    """The allocator counters a stage tracker reads (torch.cuda's functions, or a fake in tests)."""

    allocated: Callable[[], int]  # bytes allocated now (torch.cuda.memory_allocated)
    max_allocated: Callable[[], int]  # high-water mark since the last reset (torch.cuda.max_memory_allocated)
    reset_peak: Callable[[], None]  # torch.cuda.reset_peak_memory_stats
    synchronize: Callable[[], None]  # torch.cuda.synchronize: stage wall times are device times
    device_type: str = "cuda"  # roots whose first input is on this device are probed (a test fake uses "cpu")


def cuda_allocator_probe(device: str) -> AllocatorProbe | None:
    """The real probe on a CUDA run, None elsewhere (CPU and meta have no caching allocator to read)."""
    if device != "cuda" or not torch.cuda.is_available():
        return None
    return AllocatorProbe(
        allocated=lambda: int(torch.cuda.memory_allocated()),
        max_allocated=lambda: int(torch.cuda.max_memory_allocated()),
        reset_peak=torch.cuda.reset_peak_memory_stats,
        synchronize=torch.cuda.synchronize,
    )


@dataclass
class AllocatorFrame:
    """One active root call's allocator bookkeeping."""

    entry: int  # bytes allocated at the call's entry
    seen: int  # the highest mark folded in so far (before nested roots reset the allocator's)


class AllocatorPeaks:
    """Per-call allocator peaks above the entry level, nested roots handled as the module docstring says."""

    def __init__(self, probe: AllocatorProbe) -> None:
        self.probe = probe
        self.stack: list[AllocatorFrame] = []
        self.run_max = 0  # the absolute high-water mark over every reset (the run's cuda_max_allocated_bytes)

    def _reset(self) -> None:
        self.run_max = max(self.run_max, self.probe.max_allocated())
        self.probe.reset_peak()

    def high_water(self) -> int:
        """The absolute high-water mark since the run began, the per-stage resets notwithstanding."""
        return max(self.run_max, self.probe.max_allocated())

    def enter(self) -> None:
        """A root call starts: fold the mark so far into the parent, reset, remember the entry level."""
        if self.stack:
            parent = self.stack[-1]
            parent.seen = max(parent.seen, self.probe.max_allocated())
        now = self.probe.allocated()
        self._reset()
        self.stack.append(AllocatorFrame(entry=now, seen=now))

    def exit(self) -> int:
        """The call ends: its high-water mark above its entry level; the parent goes on from the level left."""
        frame = self.stack.pop()
        peak = max(frame.seen, self.probe.max_allocated()) - frame.entry
        if self.stack:
            self._reset()
            parent = self.stack[-1]
            parent.seen = max(parent.seen, self.probe.allocated())
        return max(peak, 0)
