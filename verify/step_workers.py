"""Decode-step ranges measured in parallel: worker processes beside the main one, each with its own model.

A metered step is Python-bound (one core), and the key counts a run lacks are independent of each other
(`vendor_shim.decode_steps`), so `--jobs N` splits them into N ranges: the main process measures one, N - 1 spawned
workers the others.  A worker builds the backend and its model once, on its first range, and measures each range as
the main process would (the cheapest page that reaches it, `sweep_workload`, under the same harness); its steps come
back as plain records.  A worker that fails costs nothing but time: its range is measured by the main process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.workload import VisionWorkload
from vendor_shim.decode_steps import StepRecord

MAX_JOBS = 64
MIN_STEPS_PER_JOB = 100  # a smaller part costs more than it saves (its sweep prefill, a worker's first start)


JOB_MEMORY = 2 << 30  # bytes one process needs at the published depth, shapes execution (~1.7 GiB peak measured)


def default_jobs() -> int:
    """The processors this process may run on, as many as the available memory holds processes (at most
    MAX_JOBS)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_JOBS, _available_memory() // JOB_MEMORY))


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo; without it (not Linux) no limit."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return MAX_JOBS * JOB_MEMORY


def step_cost(keys: int) -> float:
    """A metered decode step's rough cost over ``keys`` keys, in steps over none: transformers' DynamicCache copies
    its whole K/V every step (about 55 ms a step at 300 keys, 80 at 4,000 on the 2-core EPYC: docs/measurements.md).
    Balances the parts only; nothing measured depends on it."""
    return 1.0 + keys / 10_000


def prefill_cost(first: int) -> float:
    """A sweep's prefill before its first step at ``first`` keys, in the same units: eager attention's scores over
    first - 1 tokens are real elementwise work, quadratic in them (about 24 s, ~270 steps, at 4,000 keys)."""
    return (first / 250) ** 2


def split(
    ranges: list[tuple[int, int]],
    jobs: int,
    step: Callable[[int], float] = lambda _keys: 1.0,
    start: Callable[[int], float] = lambda _first: 0.0,
) -> list[list[tuple[int, int]]]:
    """The missing key-count ranges cut into at most ``jobs`` parts of nearly equal cost, each part a list of
    consecutive ranges; fewer parts when a part would hold under MIN_STEPS_PER_JOB steps.  ``step(keys)``: a step's
    cost, ``start(first)``: what a sweep beginning at ``first`` pays before it (uniform steps and free starts by
    default: parts of nearly equal step counts)."""
    total = sum(b - a + 1 for a, b in ranges)
    parts = max(1, min(jobs, total // MIN_STEPS_PER_JOB))
    weight = sum(start(a) + sum(step(k) for k in range(a, b + 1)) for a, b in ranges)
    target = weight / parts
    out: list[list[tuple[int, int]]] = [[]]
    spent = 0.0
    for a, b in ranges:
        if out[-1] and spent + start(a) >= target and len(out) < parts:  # full with this range's start: open the next
            out.append([])
            spent = 0.0
        first = a
        spent += start(a)
        for k in range(a, b + 1):
            if k > first and spent >= target and len(out) < parts:
                out[-1].append((first, k - 1))
                out.append([])
                first, spent = k, start(k)
            spent += step(k)
        out[-1].append((first, b))
    return out


@dataclass
class StepWorkers:
    """A pool of N - 1 spawned workers for one verification run (``options``: how `vendor_shim.measure.measure`
    is called there: backend name and its arguments, device, vision device, execution, dtype reason)."""

    jobs: int
    options: dict[str, Any]
    _pool: ProcessPoolExecutor | None = field(default=None, repr=False)

    def submit(self, workload: VisionWorkload, first: int, last: int) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs - 1,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a process holding torch's threads
                initializer=_start,
                initargs=(self.options,),
            )
        return self._pool.submit(_measure_range, workload.to_dict(), first, last)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_WORKER: dict[str, Any] = {}  # a worker process's backend and models (process-local: set once by `_start`)


@contextmanager
def threads_per_job(jobs: int) -> Iterator[None]:
    """The main process's share of the processors while workers run beside it (torch's intra-op threads would
    otherwise oversubscribe them: a metered step is one Python thread and many small kernels)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start(options: dict[str, Any]) -> None:
    import torch

    from vendor_shim.backends import get_backend
    from vendor_shim.cache import ModelCache

    torch.set_num_threads(max(1, default_jobs() // options["jobs"]))

    _WORKER["options"] = options
    _WORKER["backend"] = get_backend(options["backend"], **options["backend_args"])
    _WORKER["models"] = ModelCache()


def sweep_steps(
    run: Callable[..., dict[str, Any]], workload: VisionWorkload, first: int, last: int
) -> list[StepRecord] | None:
    """Steps first..last of ``workload``'s signature, measured by the cheapest page that reaches them
    (`vendor_shim.decode_steps.sweep_workload`) through ``run(workload, steps_out=...) -> trace dict``; None when no
    page reaches them or the run was incomplete (the page's own run then says why)."""
    from vendor_shim.decode_steps import sweep_workload

    sweep = sweep_workload(workload, first, last - first + 1)
    if sweep is None:
        return None
    out: list[StepRecord] = []
    return out if run(sweep, steps_out=out).get("complete") else None


def _measure_range(workload: dict[str, Any], first: int, last: int) -> list[dict[str, Any]]:
    """`sweep_steps` in a worker, as records (raises when it gives none: the main process measures the part)."""
    from vendor_shim.measure import measure

    o = _WORKER["options"]

    def run(w: VisionWorkload, **steps: Any) -> dict[str, Any]:
        return measure(
            w,
            backend=_WORKER["backend"],
            device=o["device"],
            model_cache=_WORKER["models"],
            fvcore=False,
            vision_device=o["vision_device"],
            execution=o["execution"],
            dtype_reason=o["dtype_reason"],
            **steps,
        ).to_dict()

    steps = sweep_steps(run, VisionWorkload.from_dict(workload), first, last)
    if steps is None:
        raise ValueError(f"no complete run reaches key counts {first}..{last}")
    return [s.to_dict() for s in steps]
