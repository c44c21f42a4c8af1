"""Run one workload through a loaded backend under the complete counter; return a `Trace`.

Depends on torch only (never imports transformers), so the remote-code backend can run
it inside its own pinned environment.  Mode stack, outermost first:
``StageTracker`` hooks -> `FusedAttention` -> `AuditMode`: the audit decomposes what torch's
`FlopCounterMode` would (an op without a formula that has a composite kernel), evaluates the
counter's formula for each leaf op (its ``flop_registry``, the shim's formulas included) and
charges the innermost stage frame, then runs the op: for real, or with ``execution="shapes"``
hollow (`vendor_shim.hollow`: counted ops answer with zeros of the right layout, top-k
routing is balanced).  ``cross_check=True`` stacks the stock `FlopCounterMode` above the audit
as an independent count (it handles each op first; ~30 ms of a ~75 ms decode step, so off by
default).  Afterwards: stage sum == audit total (== the stock counter's total when stacked),
zero FLOPs outside the roots, every expected root call seen, or `VendorRunError`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from dataclasses import dataclass, field
from operator import add
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.metrics import OP_METRICS, TRAFFIC, op_metrics
from core.schema import LM_PARTS, VISION_BRANCHES, aten_family, family_vision_stages
from core.workload import VisionWorkload
from vendor_shim.audit import AuditLog, AuditMode, ops_by_class
from vendor_shim.backends.base import (
    EXECUTIONS,
    GenerationResult,
    LoadedModel,
    PreparedInputs,
    StageRoots,
    VendorBackend,
)
from vendor_shim.decode_splice import inject, steps_of
from vendor_shim.decode_steps import StepRecord, StepRun, cells_metrics
from vendor_shim.device_memory import cuda_allocator_probe
from vendor_shim.env import base_environment, dtype_evidence, peak_rss_bytes, reset_peak_rss
from vendor_shim.errors import VendorRunError, VendorShimError
from vendor_shim.formulas import custom_mapping
from vendor_shim.hollow import HollowExecution
from vendor_shim.op_meter import FusedAttention, OpMeter
from vendor_shim.stages import UNATTRIBUTED, StageTracker, TrackerState
from vendor_shim.trace import Trace, add_call, empty_leaf, empty_stages

# What totals.counter_total is: the stock counter's own total, or the audit's sum of the same registry's formulas.
COUNTERS = {True: "torch FlopCounterMode (stacked above the audit)", False: "audit (FlopCounterMode's registry)"}


class IncompleteCountWarning(UserWarning):
    """An executed op with arithmetic on float tensors has no FLOP formula: the count is a lower bound."""


@dataclass
class _Plan:
    """What one counted run drives: inputs checked against the workload, roots, and where the vision stack runs."""

    inputs: PreparedInputs
    roots: StageRoots
    names: dict[int, str]
    vision_loaded: LoadedModel | None = None  # a separate (meta) vision build, or None
    vision_inputs: PreparedInputs | None = None


@dataclass
class _Executed:
    """What the counted execution left behind: plain data (a `BaseRuns` memo keeps copies)."""

    tracker: TrackerState
    log: AuditLog
    counter_total: int
    gen: GenerationResult | None
    execution: dict[str, Any]  # the hollow run's statistics, or {"mode": "real"}
    inputs: dict[str, Any]  # what the model received (`ReceivedInputs.to_dict`)
    vision_device: str
    run_s: float
    memory: dict[str, Any]
    counter: str  # what counter_total is (`COUNTERS`)
    steps_stored: int = 0  # decode steps taken from `vendor_shim.decode_steps` records, not executed here
    base_reused: bool = False  # vision and prefill taken from an earlier run of the same signature (`BaseRuns`)


@dataclass
class BaseRuns:
    """A run's vision and prefill kept for the pages after it: at batch 1 in shapes execution they depend on the
    workload's signature without its decode length, so a page given its decode steps (`vendor_shim.decode_steps`)
    whose signature ran before needs neither executed again.  Held by the caller (one per verification run);
    copies in and out, so no page's splice reaches another's."""

    max_entries: int = 64
    _runs: dict[tuple[Any, ...], tuple[_Executed, Any, Any]] = field(default_factory=dict)

    @staticmethod
    def key(loaded: LoadedModel, vision_loaded: LoadedModel | None, workload: VisionWorkload) -> tuple[Any, ...]:
        signature = workload.signature() | {"decode_tokens": 0}
        return (id(loaded), id(vision_loaded), json.dumps(signature, sort_keys=True, default=str))

    def get(self, key: tuple[Any, ...]) -> _Executed | None:
        hit = self._runs.get(key)
        return None if hit is None else copy.deepcopy(hit[0])

    def put(self, key: tuple[Any, ...], done: _Executed, loaded: Any, vision_loaded: Any) -> None:
        """Keeps a copy (and the models, so the ids in the key stay theirs); the oldest goes beyond max_entries."""
        while self._runs and len(self._runs) >= self.max_entries:
            self._runs.pop(next(iter(self._runs)))
        self._runs[key] = (copy.deepcopy(done), loaded, vision_loaded)


def run_counted(
    backend: VendorBackend,
    loaded: LoadedModel,
    workload: VisionWorkload,
    *,
    vision_only: bool,
    fvcore: bool = True,
    model_reused: bool = False,
    vision_loaded: LoadedModel | None = None,
    execution: str = "real",
    dtype_reason: str | None = None,
    cross_check: bool = False,
    decode_steps: list[StepRecord] | StepRun | None = None,
    steps_out: list[StepRecord] | None = None,
    base_runs: BaseRuns | None = None,
) -> Trace:
    """Count one workload.  ``vision_loaded`` (a vision-only build, e.g. on meta) runs the vision stack while
    ``loaded`` runs the decoder on pre-encoded placeholders; both under the same counter, audit and hooks.
    ``execution="shapes"`` runs the counted ops hollow (`vendor_shim.hollow`): same ops, same counts, no arithmetic.
    ``decode_steps``: the workload's K decode steps, measured before (`vendor_shim.decode_steps`): the run executes
    vision and prefill and takes the steps from these (a `StepRun`: with their sums taken at once).  ``steps_out``
    receives the run's own decode steps.
    ``base_runs``: with ``decode_steps``, vision and prefill come from an earlier run of the same signature when it
    holds one (and are kept there when it does not)."""
    if base_runs is not None and (decode_steps is None or fvcore):
        raise VendorRunError("kept vision and prefill serve runs given their decode steps, without fvcore")
    if decode_steps is not None and (execution != "shapes" or cross_check or vision_only):
        raise VendorRunError("stored decode steps serve shapes-only full runs without the stock counter only")
    if decode_steps is not None and len(decode_steps) != workload.decode_tokens:
        raise VendorRunError(f"{len(decode_steps)} stored decode steps for a {workload.decode_tokens}-step workload")
    if execution not in EXECUTIONS:
        raise VendorRunError(f"execution {execution!r} unknown: use one of {', '.join(EXECUTIONS)}")
    t0 = time.perf_counter()
    done = None
    if base_runs is not None:
        key = BaseRuns.key(loaded, vision_loaded, workload)
        done = base_runs.get(key)
    plan = None
    if done is None:
        plan = _plan(backend, loaded, workload, vision_only, vision_loaded)
        k_run = workload.decode_tokens if decode_steps is None else 0
        done = _execute(backend, loaded, workload, plan, vision_only, execution, cross_check, k_run)
        if base_runs is not None:
            base_runs.put(key, done, loaded, vision_loaded)
    else:
        done.base_reused = True
    if decode_steps:
        _splice(done, decode_steps, workload.prefill_len)
    if steps_out is not None and not vision_only:
        steps_out.extend(
            steps_of(
                done.tracker,
                done.log,
                workload.prefill_len,
                workload.decode_tokens,
                set(done.log.no_convention),
                set(done.log.alias_mismatch),
            )
        )
    stages, op_breakdown, totals = _checked_counts(done, workload, vision_only)
    uncounted, reasons = _coverage_gaps(done.log)
    foreign_names = backend.foreign_ops().names()
    secondary = _secondary(backend, loaded, plan, done, vision_only) if fvcore and plan is not None else {}
    trace = Trace(
        backend=backend.name,
        device=loaded.device,
        dtype=loaded.dtype,
        vision_only=vision_only,
        complete=not uncounted,
        workload=workload.to_dict(),
        received=_received(done, vision_only),
        stages=stages,
        totals=totals,
        op_breakdown=op_breakdown,
        calls=[r.to_dict() for r in sorted(done.tracker.records, key=lambda r: r.index)],
        coverage=_coverage(done.log, uncounted, foreign_names),
        environment=_environment(backend, loaded, dtype_reason),
        timing=_timing(t0, loaded, done, model_reused),
        memory=done.memory,
        secondary=secondary,
        incomplete_reasons=reasons,
    )
    trace.to_dict()  # validate before handing it out
    return trace


def _checked_counts(
    done: _Executed, workload: VisionWorkload, vision_only: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Stages, op breakdown and totals of the run, after the consistency checks passed (else `VendorRunError`)."""
    stages, op_breakdown, unattributed = _assemble(done.tracker, workload, vision_only)
    stage_sum = _stage_sum(stages, workload.model)
    _check_consistency(
        done.tracker, workload, vision_only, done.gen, done.counter_total, done.log.total_flops, stage_sum, unattributed
    )
    totals = {
        "counter_total": done.counter_total,
        "stage_sum": stage_sum,
        "audit_total": int(done.log.total_flops),
        "unattributed": unattributed,
        "counter": done.counter,
    }
    return stages, op_breakdown, totals


def _coverage(log: AuditLog, uncounted: list[str], foreign: list[str]) -> dict[str, Any]:
    """What the audit saw: the ops without a formula, every op by class, and the formulas registered (the shim's
    and the backend's own ops, `vendor_shim.foreign_ops`)."""
    return {
        "uncounted_ops": uncounted,
        "ops_seen": ops_by_class(log),
        "custom_formulas": sorted([*(str(k) for k in custom_mapping()), *foreign]),
        "no_elementwise_convention": list(log.no_convention),
        "alias_by_behaviour": list(log.alias_mismatch),
    }


def _timing(t0: float, loaded: LoadedModel, done: _Executed, model_reused: bool) -> dict[str, Any]:
    """Seconds of the run; ``wall_s`` includes the build unless the model was reused."""
    return {
        "wall_s": time.perf_counter() - t0 + (0.0 if model_reused else loaded.build_s),
        "build_s": loaded.build_s,
        "run_s": done.run_s,
        "model_reused": model_reused,
        "stage_wall_s": stage_wall_times(done.tracker.records),
        "stage_wall_synchronized": done.tracker.allocator is not None,
    }


def _plan(
    backend: VendorBackend,
    loaded: LoadedModel,
    workload: VisionWorkload,
    vision_only: bool,
    vision_loaded: LoadedModel | None,
) -> _Plan:
    """Inputs read back and checked against the workload (a mismatch fails before anything runs)."""
    if not vision_only and loaded.vision_only:
        raise VendorRunError("model was built vision-only but a full run was requested: rebuild it")
    want = family_vision_stages(workload.model)
    for built in (loaded, vision_loaded):
        if built is not None and tuple(built.roots.vision) != want:
            raise VendorRunError(
                f"the model has vision stages {', '.join(built.roots.vision)} but a {workload.model} workload needs "
                f"{', '.join(want)}: build the backend for --model {workload.model}"
            )
    inputs = backend.prepare_inputs(loaded, workload)
    inputs.received.check_against(workload)
    names = {id(m): n or type(m).__name__ for n, m in loaded.model.named_modules()}
    if vision_loaded is None or vision_only:
        return _Plan(inputs, loaded.roots, names)
    vision_inputs = backend.prepare_inputs(vision_loaded, workload)
    vision_inputs.received.check_against(workload)
    vr, r = vision_loaded.roots, loaded.roots
    names.update({id(m): f"[{vision_loaded.device}] {n}" for n, m in vision_loaded.model.named_modules()})
    roots = StageRoots(dict(vr.vision), r.decoder, r.lm_head, r.top)
    return _Plan(inputs, roots, names, vision_loaded, vision_inputs)


def _execute(
    backend: VendorBackend,
    loaded: LoadedModel,
    workload: VisionWorkload,
    plan: _Plan,
    vision_only: bool,
    execution: str,
    cross_check: bool = False,
    k_run: int | None = None,
) -> _Executed:
    """The run itself under hooks and audit (and the stock counter when cross-checking: module docstring), with its
    peak memory."""
    foreign = backend.foreign_ops()
    meter = OpMeter(
        weights=_weight_storages(loaded, plan.vision_loaded),
        foreign=foreign.by_packet(),
        topk_routing=not foreign.reports_routing,
    )
    tracker = StageTracker(
        plan.roots,
        global_view_size=workload.global_view_size,
        crop_size=workload.crop_size,
        n_crops=workload.n_crops,
        book=meter.book,
        module_names=plan.names,
        allocator=cuda_allocator_probe(loaded.device),
    )
    counter = global_total_counter(foreign.flop_formulas())  # its registry is the audit's; entered if cross_check
    log = AuditLog()
    hollow = HollowExecution(set(counter.flop_registry)) if execution == "shapes" else None
    audit = AuditMode(counter.flop_registry, tracker.charge, log, meter, execute=hollow, count_call=tracker.count_call)
    fused = FusedAttention(meter, tracker.charge)
    cuda = loaded.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_reset = reset_peak_rss()
    gen: GenerationResult | None = None
    k_run = workload.decode_tokens if k_run is None else k_run
    t_run = time.perf_counter()
    try:
        with tracker.attached(), torch.no_grad(), fused, audit, counter if cross_check else contextlib.nullcontext():
            if vision_only:
                backend.run_vision(loaded, plan.inputs)
            elif plan.vision_loaded is not None and plan.vision_inputs is not None:
                backend.run_vision(plan.vision_loaded, plan.vision_inputs)
                gen = backend.run_generation_preencoded(loaded, plan.inputs, k_run, workload.lm_head_scope)
            else:
                gen = backend.run_generation(loaded, plan.inputs, k_run, workload.lm_head_scope)
    except VendorShimError:
        raise
    except Exception as exc:
        raise VendorRunError(f"vendor run failed: {type(exc).__name__}: {exc}") from exc
    if cuda:
        torch.cuda.synchronize()
    high_water = tracker.allocator.high_water() if tracker.allocator is not None else None
    memory = {
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_scope": "this run" if rss_reset else "process lifetime",
        "cuda_max_allocated_bytes": high_water if cuda else None,
        "weight_resident_bytes": _resident_weight_bytes(loaded),
        "kv_cache_resident_bytes": list(tracker.kv_resident),  # after each forward: prefill, decode 1..K
    }
    log.no_convention = sorted(meter.no_convention)
    log.alias_mismatch = sorted(meter.alias_mismatch)
    counted = int(counter.get_total_flops()) if cross_check else int(log.total_flops)
    return _Executed(
        tracker.state(),
        log,
        counted,
        gen,
        hollow.stats.to_dict() if hollow is not None else {"mode": "real"},
        plan.inputs.received.to_dict(),
        plan.vision_loaded.device if plan.vision_loaded is not None else loaded.device,
        time.perf_counter() - t_run,
        memory,
        COUNTERS[cross_check],
    )


def _splice(done: _Executed, steps: list[StepRecord] | StepRun, prefill_len: int) -> None:
    """Stored decode steps into a run that executed vision and prefill only (`vendor_shim.decode_splice`)."""
    no_convention, alias_mismatch = set(done.log.no_convention), set(done.log.alias_mismatch)
    records, sums = (steps.records, steps.sums) if isinstance(steps, StepRun) else (steps, None)
    inject(done.tracker, done.log, records, prefill_len, no_convention, alias_mismatch, sums)
    done.log.no_convention, done.log.alias_mismatch = sorted(no_convention), sorted(alias_mismatch)
    done.memory["kv_cache_resident_bytes"] = list(done.tracker.kv_resident)  # after the prefill and each step
    done.counter_total = int(done.log.total_flops)  # the audit's (the stock counter never serves stored steps)
    done.steps_stored = len(steps)


def _models(loaded: LoadedModel, vision_loaded: LoadedModel | None) -> list[torch.nn.Module]:
    return [loaded.model] + ([vision_loaded.model] if vision_loaded is not None else [])


def _weight_storages(loaded: LoadedModel, vision_loaded: LoadedModel | None) -> frozenset[int]:
    """Storage identities of every parameter and buffer: reads of these are weight_bytes."""
    return frozenset(
        t.untyped_storage()._cdata for m in _models(loaded, vision_loaded) for t in (*m.parameters(), *m.buffers())
    )


def _resident_weight_bytes(loaded: LoadedModel) -> int:
    """Bytes of the model's distinct parameter and buffer storages (what its weights occupy).  A separate vision
    build (counting the vision stack on meta) is a counting aid, not memory the model needs: the model itself
    holds its vision tower too."""
    seen: dict[int, int] = {}
    for t in (*loaded.model.parameters(), *loaded.model.buffers()):
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def _coverage_gaps(log: AuditLog) -> tuple[list[str], list[str]]:
    """Executed ops with arithmetic but no formula, and the reasons the trace gives; warns loudly if any."""
    uncounted = log.uncounted()
    reasons = [f"no FLOP formula for executed op {op} (arithmetic on float tensors)" for op in uncounted]
    if uncounted:
        warnings.warn(
            f"INCOMPLETE FLOP COUNT: {len(uncounted)} executed op(s) have no formula: {', '.join(uncounted)}; "
            "register a formula in vendor_shim/formulas.py or allow-list it in vendor_shim/audit.py with a reason",
            IncompleteCountWarning,
            stacklevel=3,
        )
    return uncounted, reasons


def _secondary(
    backend: VendorBackend, loaded: LoadedModel, plan: _Plan, done: _Executed, vision_only: bool
) -> dict[str, Any]:
    """fvcore's count of the vision stack, on meta modules so it costs milliseconds."""
    from vendor_shim.fvcore_check import fvcore_secondary

    meta_roots = None
    if plan.vision_loaded is not None:
        meta_roots = dict(plan.vision_loaded.roots.vision)
    elif loaded.device != "meta":
        try:
            meta = backend.build(device="meta", dtype=loaded.dtype, attn_impl=loaded.attn_impl, vision_only=True)
            meta_roots = dict(meta.roots.vision)
        except Exception:
            meta_roots = None
    return {"fvcore": fvcore_secondary(loaded, done.tracker.records, vision_only, meta_roots)}


def _environment(backend: VendorBackend, loaded: LoadedModel, dtype_reason: str | None) -> dict[str, Any]:
    env = base_environment(loaded.device, loaded.dtype, backend.name)
    env["dtype_reason"] = dtype_reason or dtype_evidence(loaded.dtype, loaded.device)
    env.update(backend.environment())
    env["model"] = loaded.info
    return env


def _received(done: _Executed, vision_only: bool) -> dict[str, Any]:
    """What the model received and how it ran: read back from inputs and hooks, not copied from the workload."""
    received: dict[str, Any] = dict(done.inputs)
    received["decode_forwards"] = 0 if vision_only else done.tracker.top_calls - 1
    received["lm_head_scope"] = done.gen.lm_head_scope if done.gen else None
    received["generation_path"] = done.gen.path if done.gen else None
    received["vision_device"] = done.vision_device
    received["execution"] = dict(done.execution)
    if done.base_reused:  # vision and prefill as an earlier run of this signature executed them
        received["execution"]["vision_and_prefill_from"] = "an earlier run of the same signature"
    if done.steps_stored:  # the hollow counts above are the run's own: vision and prefill
        received["execution"]["decode_steps_from_store"] = done.steps_stored
        received["generation_path"] = (
            f"{received['generation_path']}; then {done.steps_stored} decode steps executed by an earlier run at the "
            "same key counts (vendor_shim.decode_steps)"
        )
    hits = done.tracker.experts_hit
    received["routing"] = {  # experts hit per MoE layer: what the weight reads of the run depend on
        "prefill_experts_hit": list(hits.get(0, [])),
        "decode_experts_hit": [list(hits.get(t, [])) for t in range(1, received["decode_forwards"] + 1)],
    }
    return received


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to "Global", no per-module hooks."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def global_total_counter(extra: dict[Any, Any] | None = None) -> FlopCounterMode:
    """torch's counter with the shim's formulas (and ``extra``: a backend's foreign ops), keeping only its global
    total.

    Its per-module breakdown (a ModuleTracker hooking every module call, ~15 % of a shapes-only run) is never
    read: stages come from `StageTracker`.  If a torch release stops honouring the stand-in, the counter's total
    stops matching the audit's and `_check_consistency` fails the run loudly."""
    counter = FlopCounterMode(display=False, custom_mapping={**custom_mapping(), **(extra or {})})
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


def _assemble(
    tracker: TrackerState, workload: VisionWorkload, vision_only: bool
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Leaves from the per-op cells (sums) and the call records (``peak_bytes``: the maximum over calls)."""
    k = 0 if vision_only else workload.decode_tokens
    stored = tracker.stored_steps  # a stored step's metrics and its entry in the steps come from its record
    for t in stored:
        if not 1 <= t <= k:
            raise VendorRunError(f"a stored decode step given as step {t}, outside 1..{k}")
    stages = empty_stages(0, workload.model)
    stages["decode"]["steps"] = [
        stored[t].trace_step if t in stored else {p: empty_leaf() for p in LM_PARTS} for t in range(1, k + 1)
    ]
    raw: dict[tuple[str, str], dict[str, list[int]]] = {}  # (stage, part) -> op -> cells summed over steps
    unattributed = 0
    at_once = tracker.stored_sums  # and their cells, summed at once, when the splice was given the sums
    for (stage, part, step), ops in tracker.leaf_ops.items():
        record = stored.get(step) if stage == "decode" else None
        if record is not None and at_once is not None:
            continue  # added below, all steps at once
        sums = record.part_metrics[part] if record is not None else cells_metrics(ops)
        if (stage, part) == UNATTRIBUTED:
            unattributed += sums["tensor_flops"]
            stage, part = UNATTRIBUTED  # still listed, so a failure points at the ops
        else:
            leaves = [stages[stage][part]]
            if stage == "decode":
                if not 1 <= step <= k:
                    raise VendorRunError(f"decode work charged to step {step}, outside 1..{k}")
                if record is None:
                    leaves.append(stages["decode"]["steps"][step - 1][part])
            for leaf in leaves:
                for metric, v in sums.items():
                    leaf[metric] += v
        _add_cells(raw.setdefault((stage, part), {}), ops)
    for part, ops in (at_once.cells if at_once is not None else {}).items():
        leaf = stages["decode"][part]
        for metric, v in cells_metrics(ops).items():  # linear in the traffic: the sum of the steps' metrics
            leaf[metric] += v
        _add_cells(raw.setdefault(("decode", part), {}), ops)
    breakdown: dict[str, Any] = {}
    for (stage, part), ops in raw.items():  # the metrics are linear in the traffic: per op once, steps summed
        dst = breakdown.setdefault(stage, {}).setdefault(part, {})
        for op, cell in ops.items():
            row = {"flops": 0, "calls": cell[-1], "family": aten_family(op)} | dict.fromkeys(OP_METRICS[1:], 0)
            for metric, v in op_metrics(dict(zip(TRAFFIC, cell, strict=False))).items():
                row["flops" if metric == "tensor_flops" else metric] += v
            dst[op] = row
    for rec in tracker.records:
        leaves = [stages[rec.stage][rec.part]]
        if rec.stage == "decode" and 1 <= rec.step <= k and rec.step not in stored:
            leaves.append(stages["decode"]["steps"][rec.step - 1][rec.part])
        for leaf in leaves:
            add_call(leaf, rec.peak_bytes, rec.allocator_peak_bytes)
    return stages, breakdown, unattributed


def _add_cells(dst: dict[str, list[int]], ops: dict[str, list[int]]) -> None:
    for op, cell in ops.items():
        acc = dst.get(op)
        dst[op] = list(cell) if acc is None else list(map(add, acc, cell))


def stage_wall_times(records: list[Any]) -> dict[str, dict[str, float]]:
    """Seconds per stage and part, summed over the root's calls (decode: over steps); a nested root's time is in
    its parent's too.  On cuda each call is synchronized at both ends (`StageTracker`), so this is device time."""
    out: dict[str, dict[str, float]] = {}
    for rec in records:
        part = out.setdefault(rec.stage, {})
        part[rec.part] = part.get(rec.part, 0.0) + rec.wall_s
    return out


def _stage_sum(stages: dict[str, Any], family: str) -> int:
    total = sum(stages[s][b]["tensor_flops"] for s in family_vision_stages(family) for b in VISION_BRANCHES)
    return total + sum(stages[s][p]["tensor_flops"] for s in ("prefill", "decode") for p in LM_PARTS)


def _check_consistency(
    tracker: TrackerState,
    workload: VisionWorkload,
    vision_only: bool,
    gen: GenerationResult | None,
    counter_total: int,
    audit_total: int,
    stage_sum: int,
    unattributed: int,
) -> None:
    if unattributed:
        ops = tracker.leaf_ops.get((*UNATTRIBUTED, -1), {}) or next(
            (v for (s, p, _), v in tracker.leaf_ops.items() if (s, p) == UNATTRIBUTED), {}
        )
        raise VendorRunError(
            f"{unattributed} counted FLOPs ran outside every stage root (ops: {', '.join(sorted(ops))}): "
            "add a stage root for them in the backend"
        )
    if not (counter_total == audit_total == stage_sum):
        raise VendorRunError(
            f"stage sum {stage_sum} != FlopCounterMode total {counter_total} (audit {audit_total}): "
            "attribution lost ops"
        )
    seen: dict[tuple[str, str], int] = {}
    for r in tracker.records:
        seen[(r.root, r.part)] = seen.get((r.root, r.part), 0) + 1
    for root in family_vision_stages(workload.model):
        for branch in VISION_BRANCHES:
            want = 1 if branch == "global" or workload.has_crops else 0
            if seen.get((root, branch), 0) != want:
                raise VendorRunError(
                    f"{root} ran {seen.get((root, branch), 0)}x for branch {branch}, expected {want}: "
                    "the vendor's view layout differs from the workload"
                )
    if vision_only:
        return
    k = workload.decode_tokens
    if tracker.top_calls != k + 1:
        raise VendorRunError(f"{tracker.top_calls} model forwards ran, expected prefill + {k} decode steps")
    for part in LM_PARTS:
        if seen.get((part, part), 0) != k + 1:
            raise VendorRunError(f"{part} ran {seen.get((part, part), 0)}x, expected {k + 1} (prefill + {k} decode)")
    if gen is None or gen.lm_head_scope != workload.lm_head_scope:
        raise VendorRunError("the generation did not report the lm_head scope the workload asked for")
    # Observed, not reported: the prefill lm_head input has 1 row ("last") or prefill_len rows ("all").
    head = next(r for r in tracker.records if r.stage == "prefill" and r.root == "lm_head")
    rows = head.input_shapes[0][1][-2] if head.input_shapes and len(head.input_shapes[0][1]) >= 2 else None
    want = 1 if workload.lm_head_scope == "last" else workload.prefill_len
    if rows != want:
        raise VendorRunError(
            f"prefill lm_head saw {rows} positions, lm_head_scope {workload.lm_head_scope!r} means {want}: "
            "the backend ignored the scope"
        )
