"""Decode steps as data: what one metered decode step left in the tracker and the audit, keyed by its key count.

At batch 1 a decode step's executed work depends on the model, backend, implementation, dtype, routing rule and
the number of keys it attends over (prefill_len + t), never on the page: the vision stack ran in the prefill and
the step sees one token and a cache of that length.  Torch-free (the verifier keeps and looks steps up without
importing torch); `vendor_shim.decode_splice` takes a run's steps out of its tracker and audit log and puts stored
ones into another run.  Only hollow (shapes) runs qualify: with real arithmetic the routing is data and the step
depends on the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from core.families import family
from core.metrics import TRAFFIC, op_metrics
from core.schema import LM_PARTS
from core.workload import VisionWorkload
from vendor_shim.trace import add_call, empty_leaf

TENSOR = TRAFFIC.index("tensor_flops")
STEP_FORMAT = 1  # bump when a StepRecord's fields change meaning
_CELL = len(TRAFFIC) + 1  # a leaf cell: the traffic vector, then the call count


def cells_metrics(ops: dict[str, list[int]]) -> dict[str, int]:
    """A leaf's metrics from its per-op cells ([*TRAFFIC, calls]): the traffic summed over the ops, then
    `core.metrics.op_metrics` (the metrics are linear in it)."""
    return op_metrics({t: sum(cell[i] for cell in ops.values()) for i, t in enumerate(TRAFFIC)})


@dataclass(frozen=True)
class StepRecord:
    """One decode step: ``keys`` it attended over; per part (decoder, lm_head) its per-op cells; its root calls;
    the K/V cache bytes after it; the experts its MoE layers hit; the audit class of each op it ran."""

    keys: int
    cells: dict[str, dict[str, list[int]]]  # part -> op -> [*TRAFFIC, calls]
    calls: list[dict[str, Any]]  # root, module, part, input_shapes, tensor_flops, ops, peak_bytes, ... wall_s
    kv_resident: int
    experts_hit: list[int]
    classes: dict[str, str]  # op -> audit class (counted, allowed:<category>, non_float, uncounted)
    no_convention: list[str] = field(default_factory=list)
    alias_mismatch: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Derived once per record (a run keeps its records, `verify.step_cache`, and every page that decodes past this
    # key count is given the same one): what the splice and the assembly would otherwise add up again per page.
    @cached_property
    def part_metrics(self) -> dict[str, dict[str, int]]:
        """part -> the step's leaf metrics (`cells_metrics`)."""
        return {part: cells_metrics(ops) for part, ops in self.cells.items()}

    @cached_property
    def trace_step(self) -> dict[str, dict[str, Any]]:
        """The step's entry in a trace's ``stages.decode.steps``, built as the harness's assembly builds a leaf (its
        metrics, then each root call: `vendor_shim.trace.add_call`); one object shared by every page given this
        record (nothing writes a finished trace's steps)."""
        steps = {part: empty_leaf() for part in LM_PARTS}  # as `vendor_shim.trace.empty_stages` has them
        for part, metrics in self.part_metrics.items():
            steps[part] |= metrics  # onto zeros: the assembly's `+=`
        for c in self.calls:
            add_call(steps[c["part"]], c["peak_bytes"], c["allocator_peak_bytes"])
        return steps

    @cached_property
    def op_totals(self) -> list[tuple[str, int, int, str]]:
        """(op, calls, tensor FLOPs, audit class) over both parts, in cell order: what the audit log is given."""
        return [(op, c[-1], c[TENSOR], self.classes[op]) for ops in self.cells.values() for op, c in ops.items()]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        """Raises ValueError for anything that is not a well-formed step (a stored entry is then a miss)."""
        try:
            step = cls(
                keys=int(d["keys"]),
                cells={
                    str(p): {str(op): [int(v) for v in c] for op, c in ops.items()} for p, ops in d["cells"].items()
                },
                calls=[dict(c) for c in d["calls"]],
                kv_resident=int(d["kv_resident"]),
                experts_hit=[int(x) for x in d["experts_hit"]],
                classes={str(k): str(v) for k, v in d["classes"].items()},
                no_convention=[str(x) for x in d.get("no_convention", [])],
                alias_mismatch=[str(x) for x in d.get("alias_mismatch", [])],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a decode step record: {exc}") from None
        if any(len(c) != _CELL for ops in step.cells.values() for c in ops.values()):
            raise ValueError(f"a cell of step {step.keys} does not have {_CELL} entries")
        if any(op not in step.classes for ops in step.cells.values() for op in ops):
            raise ValueError(f"step {step.keys} has an op without its audit class")
        return step


@dataclass(frozen=True)
class StepSums:
    """What a run of consecutive steps adds up to, taken at once: part -> op -> [*TRAFFIC, calls] summed over the
    steps (an op is listed when any step ran it, as step-by-step sums list it), and op -> its audit class as
    `vendor_shim.decode_splice.inject` resolves it step by step (the first class that is not non_float)."""

    cells: dict[str, dict[str, list[int]]]
    classes: dict[str, str]


@dataclass(frozen=True)
class StepRun:
    """A page's K stored steps (step t over prefill_len + t keys) and their sums (`StepLedger.sums`)."""

    records: list[StepRecord]
    sums: StepSums

    def __len__(self) -> int:
        return len(self.records)


_WIDTH = _CELL + 1  # a ledger column: the cell, then 1 where the step ran the op


class StepLedger:
    """Running sums of a signature's stored steps in key order: the sums over any run of consecutive key counts are
    one row's difference from another, where step by step a page of ~2,000 steps adds ~80 cells a step (and every
    page past a key count adds that step's cells again).  Exact: int64 while no column can overflow it (checked
    from the largest cell), Python integers otherwise."""

    def __init__(self, steps: Mapping[int, StepRecord]) -> None:
        self.keys = sorted(steps)
        self._pos = {k: i for i, k in enumerate(self.keys)}
        columns: dict[tuple[str, str], int] = {}
        for k in self.keys:
            for part, ops in steps[k].cells.items():
                for op in ops:
                    columns.setdefault((part, op), len(columns))
        self._columns = list(columns)
        rows, largest = [[0] * (len(columns) * _WIDTH)], 1
        groups: dict[tuple[tuple[str, str], ...], int] = {}
        self._classes: list[dict[str, str]] = []
        self._group: list[int] = []
        for k in self.keys:
            step = steps[k]
            row = [0] * (len(columns) * _WIDTH)
            for part, ops in step.cells.items():
                for op, cell in ops.items():
                    at = columns[(part, op)] * _WIDTH
                    row[at : at + _CELL] = cell
                    row[at + _CELL] = 1
                    largest = max(largest, *cell)
            rows.append(row)
            sig = tuple(sorted(step.classes.items()))
            if sig not in groups:
                groups[sig] = len(self._classes)
                self._classes.append(step.classes)
            self._group.append(groups[sig])
        exact = largest * (len(self.keys) + 1) < 2**62
        table = np.array(rows, dtype=np.int64 if exact else object).reshape(len(rows), len(columns), _WIDTH)
        self._cum = np.cumsum(table, axis=0)

    def sums(self, first: int, last: int) -> StepSums | None:
        """The sums over key counts first..last, or None when the ledger does not hold each of them."""
        a, b = self._pos.get(first), self._pos.get(last)
        if a is None or b is None or b - a != last - first:
            return None
        diff = self._cum[b + 1] - self._cum[a]
        cells: dict[str, dict[str, list[int]]] = {}
        for c in np.flatnonzero(diff[:, _CELL]).tolist():
            part, op = self._columns[c]
            cells.setdefault(part, {})[op] = [int(v) for v in diff[c, :_CELL]]
        classes: dict[str, str] = {}
        for g in dict.fromkeys(self._group[a : b + 1]):  # the distinct class maps of the steps, in step order
            for op, klass in self._classes[g].items():
                if classes.get(op, "non_float") == "non_float":
                    classes[op] = klass
        return StepSums(cells, classes)


# What a decode step's work depends on besides its key count (module docstring); the page's geometry and token
# counts are not among them.
STEP_FIELDS = ("model", "impl", "impl_version", "attn_impl", "dtype", "batch", "lm_head_scope")


def step_signature(workload: VisionWorkload) -> dict[str, Any]:
    return {f: getattr(workload, f) for f in STEP_FIELDS}


def sweep_workload(template: VisionWorkload, first_keys: int, steps: int) -> VisionWorkload | None:
    """The cheapest page whose decode steps 1..``steps`` attend over ``first_keys``.. keys: the family's mode with the
    fewest image tokens (no crops), its prompt padded so that prefill_len = first_keys - 1.  None when even that
    page's prefill is longer."""
    best: VisionWorkload | None = None
    for name, preset in family(template.model).rules.modes.items():
        if preset.crop_mode:
            continue
        w = VisionWorkload.from_page(
            preset.base_size, preset.base_size, name, **step_signature(template), prompt_tokens=0
        )
        if best is None or w.prefill_len < best.prefill_len:
            best = w
    pad = first_keys - 1 - best.prefill_len if best is not None else -1
    if best is None or pad < 0:
        return None
    return VisionWorkload.from_page(
        best.width, best.height, best.mode, **step_signature(template), prompt_tokens=pad, decode_tokens=steps
    )
