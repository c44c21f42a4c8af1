"""The verifier's view of the vendor: one measurement per distinct workload signature.

Wraps `vendor_shim.measure` with the on-disk trace cache and an in-memory memo, holds
the built model across pages (`ModelCache`), and batches out-of-process backends
(remote-code) so one worker and one model build serve every page of a run.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.releases import library_report, release_table
from core.workload import VisionWorkload
from reports.model import PageSpec
from vendor_shim.backends import impl_of
from vendor_shim.backends.base import OutOfProcessBackend
from vendor_shim.decode_steps import StepRecord
from vendor_shim.errors import InfrastructureError
from vendor_shim.trace import SCHEMA_VERSION
from verify import step_workers
from verify.cache import TraceCache, hash_material
from verify.runner import VendorFailure, VerifyConfig
from verify.step_cache import StepCache
from verify.step_workers import StepWorkers, prefill_cost, split, step_cost, sweep_steps, threads_per_job

_REPO = Path(__file__).resolve().parent.parent
_MEASURING_CODE = ("vendor_shim", "core")  # the shim and the kernel it reads (workload, op rules, names)


def shim_code_hash() -> str:
    """sha256 over the sources a measurement runs (vendor_shim/ and core/, whose op rules and workload the meter
    reads): a change to either must invalidate cached traces.  Recorded as ``code_hashes.vendor_shim``."""
    h = hashlib.sha256()
    for package in _MEASURING_CODE:
        for path in sorted((_REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(_REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class VendorMeasurer:
    """Callable `(workload, page) -> (trace dict, cache_hit)` used by `verify.runner.Verifier`."""

    cfg: VerifyConfig
    backend: Any
    cache: TraceCache | None
    code_hashes: dict[str, str]
    versions: dict[str, Any]
    model_cache: Any = None
    _memo: dict[str, dict[str, Any]] = field(default_factory=dict)
    _failures: dict[str, str] = field(default_factory=dict)
    _fresh: set[str] = field(default_factory=set)  # measured by prefetch, not yet handed to a page
    cache_problem: str | None = None  # why the cache is disabled or degraded, for the report's environment
    steps: StepCache | None = None  # decode steps by signature and key count; None: every page runs its own
    base_runs: Any = None  # vendor_shim.harness.BaseRuns: vision and prefill of the pages given their steps
    workers: StepWorkers | None = None  # --jobs > 1: processes measuring decode-step ranges beside this one

    @classmethod
    def create(cls, cfg: VerifyConfig) -> VendorMeasurer:
        from vendor_shim.backends import get_backend
        from vendor_shim.cache import ModelCache
        from vendor_shim.measure import check_device

        # VendorInputError (bad device, refused remote code) propagates: the CLI maps it to exit 2
        check_device(cfg.device, cfg.vision_only)
        backend = get_backend(
            cfg.backend,
            vendor_dir=cfg.vendor_dir,
            trust_remote_code=cfg.trust_remote_code,
            model=cfg.model,
            decoder_layers=cfg.decoder_layers,
        )
        code_hashes = {"vendor_shim": shim_code_hash(), **backend.signature().get("code_hashes", {})}
        versions = backend.cache_versions()
        cache = TraceCache(Path(cfg.cache_dir), validate=valid_cache_trace) if cfg.use_cache and cfg.cache_dir else None
        measurer = cls(cfg, backend, cache, code_hashes, versions, model_cache=ModelCache())
        measurer._probe_cache()
        if cfg.share_steps:  # in memory for the run, on disk beside the traces (read-only: stored steps still served)
            measurer.steps = StepCache(measurer.cache.root / "decode-steps" if measurer.cache is not None else None)
            from vendor_shim.harness import BaseRuns

            measurer.base_runs = BaseRuns()
        prepare = getattr(backend, "prepare_environment", None)
        if prepare is not None:  # InfrastructureError (exit 2): the environment cache, before any page
            prepare()
        return measurer

    def environment(self) -> dict[str, Any]:
        env = dict(self.backend.environment())
        env.update(self.final_environment())
        env["dtype_choice"] = dict(self.cfg.dtype_choice)
        env["execution"] = self.cfg.execution
        env.setdefault("cpu", _cpu_info())
        env["library_versions"] = self.versions
        env["library_range"] = library_report(impl_of(self.cfg.backend), self.versions)
        env.setdefault("code_hashes", {}).update({"vendor_shim": self.code_hashes["vendor_shim"]})
        return env

    @property
    def impl_version(self) -> str | None:
        """The release of the analytic profile's library (transformers) this backend really runs."""
        return self.versions.get(release_table(impl_of(self.cfg.backend)).library)

    def final_environment(self) -> dict[str, Any]:
        """What the run learned about its cache (a write may fail mid-run): merged into the report at the end."""
        if self.cache_problem:
            return {"cache": self.cache_problem}
        return {"cache": str(self.cache.root) if self.cache else "disabled"}

    # -- cache faults: a cache problem, never a vendor failure, never a lost page ------------------
    def _probe_cache(self) -> None:
        if self.cache is None:
            return
        problem = self.cache.probe()
        if problem is None:
            return
        if self.cache.root.is_dir():  # read-only: existing entries still serve, new traces are not stored
            self._cache_fault(f"read-only: {self.cache.root} {problem}; cached traces read, new ones not stored")
        else:
            self._cache_fault(f"disabled: {self.cache.root} {problem}; every trace measured, none stored")
            self.cache = None

    def _cache_fault(self, what: str) -> None:
        if self.cache_problem is None:  # one warning line per run
            print(
                f"warning: trace cache {what} (a cache problem, not a vendor failure; use --cache-dir to fix)",
                file=sys.stderr,
            )
        self.cache_problem = what

    def key(self, workload: VisionWorkload) -> str:
        return TraceCache.key_for(
            backend=self.cfg.backend,
            workload=workload,
            device=self._device_label(),
            vision_only=self.cfg.vision_only,
            schema_version=SCHEMA_VERSION,
            code_hashes=self.code_hashes,
            versions=self.versions,
        )

    def _device_label(self) -> str:
        vd = self.cfg.vision_device
        label = self.cfg.device if not vd or vd == self.cfg.device else f"{self.cfg.device}+vision:{vd}"
        return f"{label}+execution:{self.cfg.execution}"

    def prefetch(self, workloads: list[VisionWorkload], notify: Callable[[str], None] | None = None) -> None:
        """Before the first page: out-of-process backends measure every distinct uncached workload in one worker;
        in-process runs that share decode steps measure every key count the uncached pages need (`_prefetch_steps`;
        ``notify`` is told what, in one line, before it starts: minutes at real lengths)."""
        if not isinstance(self.backend, OutOfProcessBackend):
            if self.steps is not None:
                self._prefetch_steps(workloads, notify)
            return
        todo: dict[str, VisionWorkload] = {}
        for wl in workloads:
            k = self.key(wl)
            if k in self._memo or k in todo:
                continue
            cached = self._cached(k)
            if cached is not None:
                self._memo[k] = cached  # served as a cache hit by __call__ (k is not in _fresh)
            else:
                todo[k] = wl
        if not todo:
            return
        try:
            results = self.backend.measure_dicts(
                list(todo.values()),
                device=self.cfg.device,
                vision_only=self.cfg.vision_only,
                execution=self.cfg.execution,
                dtype_reason=self.cfg.dtype_choice.get("reason"),
            )
        except InfrastructureError:
            raise  # the machine's setup, not the vendor: the run stops with one line naming the fix
        except Exception as exc:
            for k in todo:
                self._failures[k] = _one_line(exc)
            return
        for k, res in zip(todo, results, strict=True):
            if isinstance(res, Exception):
                self._failures[k] = _one_line(res)
            else:
                self._store(k, res)
                self._fresh.add(k)

    def __call__(self, workload: VisionWorkload, page: PageSpec) -> tuple[dict[str, Any], bool]:
        k = self.key(workload)
        if k in self._failures:
            raise VendorFailure(self._failures[k])
        if k in self._memo:
            fresh = k in self._fresh  # the first page of a prefetched signature was measured, not cached
            self._fresh.discard(k)
            return self._memo[k], not fresh
        cached = self._cached(k)
        if cached is not None:
            self._memo[k] = cached
            return cached, True
        trace = self._measure(workload)
        self._store(k, trace)
        return trace, False

    def _cached(self, k: str) -> dict[str, Any] | None:
        return self.cache.get(k) if self.cache else None

    def _store(self, k: str, trace: dict[str, Any]) -> None:
        self._memo[k] = trace
        if not (self.cache and self.cache_problem is None and trace.get("complete", False)):
            return
        try:
            self.cache.put(k, trace)
        except OSError as exc:  # disk full, permissions changed mid-run: the page keeps its trace
            self._cache_fault(
                f"degraded: writing to {self.cache.root} failed ({exc.strerror or exc}); traces measured from then on "
                "not stored"
            )

    def _measure(self, workload: VisionWorkload) -> dict[str, Any]:
        if self.steps is not None and self._shares_steps(workload):
            return self._measure_sharing_steps(workload)
        return self._run(workload)

    def _run(self, workload: VisionWorkload, **steps: Any) -> dict[str, Any]:
        """One measurement (``steps``: `vendor_shim.measure`'s decode_steps / steps_out)."""
        from vendor_shim.errors import VendorShimError
        from vendor_shim.measure import measure

        try:
            trace = measure(
                workload,
                backend=self.backend,
                device=self.cfg.device,
                vision_only=self.cfg.vision_only,
                model_cache=self.model_cache,
                fvcore=False,
                vision_device=self.cfg.vision_device,
                execution=self.cfg.execution,
                dtype_reason=self.cfg.dtype_choice.get("reason"),
                **steps,
            )
        except InfrastructureError:
            raise
        except VendorShimError as exc:
            raise VendorFailure(_one_line(exc)) from exc
        return trace.to_dict(validate=False)  # every Trace `measure` hands out was validated when it was made

    # -- decode steps measured once per signature and key count (verify.step_cache) -----------------
    def _shares_steps(self, workload: VisionWorkload) -> bool:
        """Steps are page-free only in hollow runs (real arithmetic makes routing data) of in-process backends."""
        return (
            not self.cfg.vision_only
            and self.cfg.execution == "shapes"
            and workload.decode_tokens > 0
            and not isinstance(self.backend, OutOfProcessBackend)
        )

    def step_material(self, workload: VisionWorkload) -> dict[str, Any]:
        """What a decode step's key is made of: everything that changes a step, nothing of the page."""
        from vendor_shim.decode_steps import STEP_FORMAT, step_signature

        return {
            "step_format": STEP_FORMAT,
            "backend": self.cfg.backend,
            "code_hashes": self.code_hashes,  # the shim's and the backend's own (`BackendBase.signature`)
            "versions": self.versions,
            "device": self._device_label(),
            "schema_version": SCHEMA_VERSION,
            "step": step_signature(workload),
        }

    def _measure_sharing_steps(self, workload: VisionWorkload) -> dict[str, Any]:
        """The page's vision and prefill run here; its decode steps come from the step cache, and the key counts it
        lacks are measured first by the cheapest page that reaches them (`vendor_shim.decode_steps.sweep_workload`),
        split over ``--jobs`` processes (`verify.step_workers`).  With one job, a page that finds none of its steps
        runs them itself and leaves them for the others."""
        assert self.steps is not None
        material = self.step_material(workload)
        sig = hash_material(material)
        need = range(workload.prefill_len + 1, workload.prefill_len + workload.decode_tokens + 1)
        have = self.steps.get(sig, need)
        parts = split(_missing_runs(need, have), self.cfg.jobs, step_cost, prefill_cost)
        if not have and len(parts) == 1:
            own: list[Any] = []
            trace = self._run(workload, steps_out=own)
            if trace.get("complete"):
                self._keep_steps(sig, own, material)
            return trace
        if not self._fill_steps(workload, parts, sig, material, have):
            return self._run(workload)  # no page reaches them, or its run was incomplete: the page says why
        run = self.steps.run(sig, need)  # with their sums taken at once; the records alone if the store lacks one
        steps = [have[k] for k in need] if run is None else run
        return self._run(workload, decode_steps=steps, base_runs=self.base_runs)

    def _prefetch_steps(self, workloads: list[VisionWorkload], notify: Callable[[str], None] | None = None) -> None:
        """Every key count the pages without a stored trace need, measured once before the first page, per step
        signature: the union of their ranges cut into ``--jobs`` parts, one sweep a part.  Page by page, every page
        that decodes further than all before it sweeps the difference, and each sweep pays a prefill as long as its
        first key count (eager attention's scores are real elementwise work: ~25 s at 4,000 keys on 2 cores).  A
        lone page with one job, and a range shorter than a part's minimum (MIN_STEPS_PER_JOB), are left to the pages
        (their own runs, no sweep); a sweep that fails here costs time only: the pages then measure what they lack
        as before, and say why."""
        assert self.steps is not None
        groups: dict[str, tuple[dict[str, Any], VisionWorkload, set[tuple[int, int]]]] = {}
        for wl in workloads:
            if not self._shares_steps(wl) or self._trace_stored(wl):
                continue
            material = self.step_material(wl)
            group = groups.setdefault(hash_material(material), (material, wl, set()))
            group[2].add((wl.prefill_len + 1, wl.prefill_len + wl.decode_tokens))
        for sig, (material, wl, ranges) in groups.items():
            if len(ranges) == 1 and self.cfg.jobs == 1:
                continue
            have: dict[int, Any] = {}
            missing: list[tuple[int, int]] = []
            for first, last in _union(ranges):
                need = range(first, last + 1)
                have.update(self.steps.get(sig, need))
                missing += _missing_runs(need, have)
            # a short range is cheaper in the page that needs it (its own run, no sweep prefill): the default of 16
            # decode steps a page keeps that path
            missing = [(a, b) for a, b in missing if b - a + 1 >= step_workers.MIN_STEPS_PER_JOB]
            if not missing:
                continue
            parts = split(missing, self.cfg.jobs, step_cost, prefill_cost)
            if notify is not None:
                steps = sum(b - a + 1 for a, b in missing)
                notify(
                    f"measuring {steps:,} decode steps (key counts {missing[0][0]:,} to {missing[-1][1]:,}) in "
                    f"{len(parts)} process{'es' if len(parts) > 1 else ''} before the first page"
                )
            try:
                self._fill_steps(wl, parts, sig, material, have)
            except InfrastructureError:
                raise
            except Exception:  # never lose a page to an up-front sweep: each page retries its own
                continue

    def _trace_stored(self, workload: VisionWorkload) -> bool:
        """A trace file for this page is in the cache (it may still prove unreadable: the page then measures)."""
        return self.cache is not None and self.cache.path_for(self.key(workload)).is_file()

    def _fill_steps(
        self,
        workload: VisionWorkload,
        parts: list[list[tuple[int, int]]],
        sig: str,
        material: dict[str, Any],
        have: dict,
    ) -> bool:
        """The key-count ranges of ``parts`` measured (the first part here, the others by the step workers, a part
        a worker fails here too) and kept in ``have``; False when no page reaches one or its run was incomplete."""
        elsewhere = [(a, b, self._submit(workload, a, b)) for part in parts[1:] for a, b in part]
        with threads_per_job(len(parts)):
            for first, last in parts[0]:
                if not self._sweep_here(workload, first, last, sig, material, have):
                    return False
        for first, last, future in elsewhere:
            try:
                if future is None:
                    raise RuntimeError("no worker took the part")
                swept = [StepRecord.from_dict(d) for d in future.result()]
            except Exception:  # a worker that failed costs time only: its range is measured here
                if not self._sweep_here(workload, first, last, sig, material, have):
                    return False
                continue
            self._keep_steps(sig, swept, material)
            have.update({s.keys: s for s in swept})
        return True

    def _sweep_here(
        self, workload: VisionWorkload, first: int, last: int, sig: str, material: dict[str, Any], have: dict
    ) -> bool:
        """Steps first..last measured in this process (`verify.step_workers.sweep_steps`), kept; False when no page
        reaches them or its run was incomplete."""
        swept = sweep_steps(self._run, workload, first, last)
        if swept is None:
            return False
        self._keep_steps(sig, swept, material)
        have.update({s.keys: s for s in swept})
        return True

    def _submit(self, workload: VisionWorkload, first: int, last: int) -> Any:
        """A worker's future for steps first..last, or None when the pool cannot take it (it broke, or could not
        start): the main process measures the part then."""
        try:
            return self._workers().submit(workload, first, last)
        except Exception:
            return None

    def _workers(self) -> StepWorkers:
        if self.workers is None:
            self.workers = StepWorkers(
                self.cfg.jobs,
                {
                    "backend": self.cfg.backend,
                    "backend_args": {
                        "vendor_dir": self.cfg.vendor_dir,
                        "trust_remote_code": self.cfg.trust_remote_code,
                        "model": self.cfg.model,
                        "decoder_layers": self.cfg.decoder_layers,
                    },
                    "device": self.cfg.device,
                    "vision_device": self.cfg.vision_device,
                    "execution": self.cfg.execution,
                    "dtype_reason": self.cfg.dtype_choice.get("reason"),
                    "jobs": self.cfg.jobs,
                },
            )
        return self.workers

    def close(self) -> None:
        """Stops the step workers (if any ran)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def _keep_steps(self, sig: str, steps: list[Any], material: dict[str, Any]) -> None:
        assert self.steps is not None
        try:
            self.steps.put(sig, steps, material)
        except OSError as exc:  # the run keeps them in memory; the next runs measure them again
            if self.cache_problem is None:  # a read-only cache has said so already
                self._cache_fault(
                    f"degraded: writing decode steps to {self.steps.root} failed ({exc.strerror or exc}); steps "
                    "measured from then on kept for this run only"
                )
            self.steps.root = None


def _missing_runs(need: range, have: dict[int, Any]) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of consecutive key counts in ``need`` that ``have`` lacks."""
    runs: list[tuple[int, int]] = []
    for k in need:
        if k in have:
            continue
        if runs and runs[-1][1] == k - 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


def _union(ranges: set[tuple[int, int]] | list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive (first, last) ranges merged where they overlap or touch, in order."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _cpu_info() -> dict[str, Any]:
    from vendor_shim.env import cpu_info

    return cpu_info()


def valid_cache_trace(trace: dict[str, Any]) -> None:
    """A cached trace must pass the vendor's own schema check and be complete, or it is not served."""
    from vendor_shim.trace import validate_trace_dict

    validate_trace_dict(trace)
    if trace.get("complete") is not True:
        raise ValueError("an incomplete trace is never cached")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
