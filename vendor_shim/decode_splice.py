"""Decode steps in and out of a counted run (`vendor_shim.decode_steps` has the record and why it is page-free).

`steps_of` takes the K decode steps of a run out of its tracker and audit log; `inject` puts stored steps into
another run's tracker and log in place of executing them, so the harness's checks, its assembly and the trace are
the same code whichever way a step arrived.
"""

from __future__ import annotations

from typing import Any

from vendor_shim.audit import AuditLog
from vendor_shim.decode_steps import TENSOR, StepRecord, StepSums
from vendor_shim.errors import VendorRunError
from vendor_shim.stages import CallRecord, TrackerState


def steps_of(
    tracker: TrackerState, log: AuditLog, prefill_len: int, k: int, no_convention: set[str], alias_mismatch: set[str]
) -> list[StepRecord]:
    """The K decode steps of one counted run (step t attended over prefill_len + t keys)."""
    out = []
    for t in range(1, k + 1):
        cells = {
            part: {op: list(c) for op, c in ops.items()}
            for (stage, part, step), ops in tracker.leaf_ops.items()
            if stage == "decode" and step == t
        }
        names = {op for ops in cells.values() for op in ops}
        calls = [_call(r) for r in tracker.records if r.stage == "decode" and r.step == t]
        out.append(
            StepRecord(
                keys=prefill_len + t,
                cells=cells,
                calls=calls,
                kv_resident=tracker.kv_resident[t],
                experts_hit=list(tracker.experts_hit.get(t, [])),
                classes={op: log.ops[op].klass for op in sorted(names)},
                no_convention=sorted(names & no_convention),
                alias_mismatch=sorted(names & alias_mismatch),
            )
        )
    return out


def _call(r: CallRecord) -> dict[str, Any]:
    """A root call of a step as stored: its record without what the run it lands in decides (index, stage, step)."""
    return {k: v for k, v in r.to_dict().items() if k not in ("index", "stage", "step")}


def inject(
    tracker: TrackerState,
    log: AuditLog,
    steps: list[StepRecord],
    prefill_len: int,
    no_convention: set[str],
    alias_mismatch: set[str],
    sums: StepSums | None = None,
) -> None:
    """Stored steps as if the run had executed them after its prefill: step t must have attended over
    prefill_len + t keys, and the run must have executed its prefill and nothing after it.  ``sums``: the steps'
    sums taken at once (`vendor_shim.decode_steps.StepLedger`); the audit log and the assembly then add those, not
    each step's cells (`TrackerState.stored_sums`)."""
    if tracker.top_calls != 1:
        raise VendorRunError(f"stored decode steps go after the prefill only, but {tracker.top_calls} forwards ran")
    per_op: dict[str, list[Any]] = {}  # op -> [calls, tensor FLOPs, audit class] over the steps
    for t, step in enumerate(steps, start=1):
        if step.keys != prefill_len + t:
            raise VendorRunError(
                f"stored decode step for {step.keys} keys given as step {t} of a {prefill_len} prefill"
            )
        for part, ops in step.cells.items():
            key = ("decode", part, t)
            if tracker.leaf_ops.get(key):
                raise VendorRunError(f"decode step {t} ran here and was given stored: it would be counted twice")
            # the record's own cells, not a copy: nothing writes a leaf after its run executed (`steps_of` and
            # the assembly read them), and the record is the one every page past this key count is given
            tracker.leaf_ops[key] = ops
        tracker.stored_steps[t] = step
        if sums is None:
            _add_op_totals(per_op, step.op_totals)
        for c in step.calls:
            tracker.records.append(_record(c, len(tracker.records), t))
        tracker.kv_resident.append(step.kv_resident)
        if step.experts_hit:
            tracker.experts_hit[t] = list(step.experts_hit)
        if step.no_convention:
            no_convention.update(step.no_convention)
        if step.alias_mismatch:
            alias_mismatch.update(step.alias_mismatch)
    if sums is not None:
        _add_op_totals(
            per_op,
            [(op, c[-1], c[TENSOR], sums.classes[op]) for ops in sums.cells.values() for op, c in ops.items()],
        )
        tracker.stored_sums = sums
    tracker.top_calls += len(steps)
    for op, (calls, flops, klass) in per_op.items():
        log.add_op(op, calls, flops, klass)


def _add_op_totals(per_op: dict[str, list[Any]], totals: list[tuple[str, int, int, str]]) -> None:
    """(op, calls, tensor FLOPs, audit class) rows into ``per_op``: calls and FLOPs add up; a class stays the first
    that is not non_float."""
    for op, calls, flops, klass in totals:
        seen = per_op.get(op)
        if seen is None:
            per_op[op] = [calls, flops, klass]
        else:
            seen[0] += calls
            seen[1] += flops
            if seen[2] == "non_float":
                seen[2] = klass


def _record(c: dict[str, Any], index: int, step: int) -> CallRecord:
    return CallRecord(
        index=index,
        root=c["root"],
        module=c["module"],
        stage="decode",
        part=c["part"],
        step=step,
        input_shapes=c["input_shapes"],
        tensor_flops=c["tensor_flops"],
        ops=c["ops"],  # the record's (read only: CallRecord.to_dict copies it into the trace)
        entry_live=0,
        peak_live=c["peak_bytes"],
        allocator_peak_bytes=c["allocator_peak_bytes"],
        wall_s=c["wall_s"],
    )
