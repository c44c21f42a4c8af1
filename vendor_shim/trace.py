"""The vendor trace: a versioned JSON document, one per workload, validated on write and read.

Schema ``dsocr-flopcheck/vendor-trace`` version 2 (``schema_version: 2``; version 1 measured tensor FLOPs only):

- ``schema``: the literal above; ``schema_version``: 2.
- ``backend`` (str), ``device`` (cpu|cuda|meta), ``dtype`` (str), ``vision_only`` (bool).
- ``complete`` (bool): False when ``coverage.uncounted_ops`` is non-empty; ``incomplete_reasons`` (list[str]).
- ``workload``: `VisionWorkload.to_dict()` the run was asked for.
- ``received``: what the model actually received (``global_view_size, crop_size, w_crop, h_crop,
  n_crops, n_image_tokens, prompt_tokens, prefill_len``) plus ``decode_forwards`` (K run) and
  ``lm_head_scope`` (the scope really used; null when vision-only).
- ``stages``: the analytic nesting: ``stages.<vision stage>.{global,crops}.<metrics>`` for the vision stages
  of the workload's family (``workload.model``: sam, clip, projector for DeepSeek-OCR; sam, qwen2_encoder,
  projector for DeepSeek-OCR 2),
  ``stages.{prefill,decode}.{decoder,lm_head}.<metrics>``, ``stages.decode.steps`` = list of K
  ``{"decoder": {...}, "lm_head": {...}}``.  Metrics = ``core.metrics.METRICS``; the vendor
  measures every metric per aten op (definitions: `core.op_rules`); a metric the trace does
  not measure is null and missing from ``measured_metrics``.
  Leaves also carry ``calls`` (root forward calls) and ``allocator_peak_bytes``: on cuda the caching
  allocator's high-water mark above the root's entry (`vendor_shim.device_memory`; the largest over calls and
  decode steps), null on cpu and meta; reported next to ``peak_bytes``, never a gated metric (absent in older
  traces).  A branch that did not run is all zeros.
- ``measured_metrics``: the metrics measured (all of ``METRICS`` since version 2).
- ``totals``: ``counter_total`` (the whole-run total over FlopCounterMode's formula registry: the stock counter's
  own total when it was stacked above the audit, else the audit's; ``counter`` says which), ``stage_sum`` (sum of
  all leaves), ``audit_total`` (the audit's own sum) and ``unattributed`` (FLOPs outside every root,
  always 0 in a valid trace).
- ``op_breakdown``: ``{stage: {part: {aten op: {"flops", "calls", "family", <other metrics>}}}}``
  (family from ``core.schema.aten_family``; ``flops`` are tensor FLOPs), decode summed over steps;
  the fused attention op is ``fused.scaled_dot_product_attention``.
- ``calls``: per-call records (index, root, module, stage, part, step, input_shapes, tensor_flops, peak_bytes,
  allocator_peak_bytes, wall_s, ops).
- ``coverage``: ``uncounted_ops`` (sorted list of op names), ``ops_seen`` ({op: {calls, flops,
  class}}), ``custom_formulas`` (op names the shim registered), ``no_elementwise_convention`` (float
  ops the elementwise conventions do not cover), ``alias_by_behaviour`` (ops that returned a view their
  schema did not announce).
- ``secondary``: ``{"fvcore": {"status": ok|skipped|failed, "reason", "parts": {...}}}``.
- ``environment``: python, torch, transformers, device, device_name, dtype, backend,
  ``code_hashes`` ({file: sha256}), ``model`` (backend build info).
- ``timing``: ``wall_s``, ``build_s``, ``run_s``, ``model_reused``, ``stage_wall_s`` ({stage: {part: seconds}}
  summed over root calls; a nested root's time is in its parent's too) and ``stage_wall_synchronized`` (true on
  cuda: torch.cuda.synchronize at every root's entry and exit, so the seconds are device time); ``memory``:
  ``peak_rss_bytes``, ``cuda_max_allocated_bytes`` (null off cuda), ``weight_resident_bytes``
  (distinct parameter and buffer storages), ``kv_cache_resident_bytes`` (cache bytes after each forward).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.families import DEFAULT_FAMILY, FAMILIES
from core.metrics import METRICS, combine
from core.schema import LM_PARTS, LM_STAGES, VISION_BRANCHES, family_vision_stages

SCHEMA = "dsocr-flopcheck/vendor-trace"
SCHEMA_VERSION = 2
MEASURED_METRICS = METRICS  # every metric, per aten op (core.op_rules defines them)
DEVICES = ("cpu", "cuda", "meta")
ALLOCATOR_PEAK = "allocator_peak_bytes"  # a reported leaf field, not a metric: never gated


class TraceValidationError(ValueError):
    """A trace document does not match the schema; the message names the first bad field."""


def empty_leaf() -> dict[str, Any]:
    leaf: dict[str, Any] = {m: (0 if m in MEASURED_METRICS else None) for m in METRICS}
    leaf["calls"] = 0
    leaf[ALLOCATOR_PEAK] = None  # set on cuda only
    return leaf


def add_call(leaf: dict[str, Any], peak_bytes: int, allocator_peak_bytes: int | None) -> None:
    """One root call into a leaf: one more call, the larger peak, the larger allocator peak where measured (it is
    reported next to peak_bytes, never gated)."""
    leaf["calls"] += 1
    leaf["peak_bytes"] = max(leaf["peak_bytes"], peak_bytes)
    if allocator_peak_bytes is not None:
        leaf[ALLOCATOR_PEAK] = max(leaf.get(ALLOCATOR_PEAK) or 0, allocator_peak_bytes)


def empty_stages(decode_steps: int = 0, family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    stages: dict[str, Any] = {s: {b: empty_leaf() for b in VISION_BRANCHES} for s in family_vision_stages(family)}
    for s in LM_STAGES:
        stages[s] = {p: empty_leaf() for p in LM_PARTS}
    stages["decode"]["steps"] = [{p: empty_leaf() for p in LM_PARTS} for _ in range(decode_steps)]
    return stages


@dataclass
class Trace:
    """In-memory form of the document above (to_dict/from_dict validate)."""

    backend: str
    device: str
    dtype: str
    vision_only: bool
    complete: bool
    workload: dict[str, Any]
    received: dict[str, Any]
    stages: dict[str, Any]
    totals: dict[str, Any]
    op_breakdown: dict[str, Any]
    calls: list[dict[str, Any]]
    coverage: dict[str, Any]
    environment: dict[str, Any]
    timing: dict[str, Any]
    memory: dict[str, Any]
    secondary: dict[str, Any] = field(default_factory=dict)
    incomplete_reasons: list[str] = field(default_factory=list)
    measured_metrics: list[str] = field(default_factory=lambda: list(MEASURED_METRICS))
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self, validate: bool = True) -> dict[str, Any]:
        """The trace document; ``validate=False`` for a Trace validated when it was made (`run_counted`,
        `from_dict`): a 4,000-step page's second validation costs as much as splicing it."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if validate:
            validate_trace_dict(d)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        validate_trace_dict(d)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise TraceValidationError(f"invalid vendor trace: {msg}")


def _check_leaf(leaf: Any, where: str, measured: tuple[str, ...] | list[str] = MEASURED_METRICS) -> int:
    _require(isinstance(leaf, dict), f"{where} is not an object")
    for m in METRICS:
        _require(m in leaf, f"{where} lacks metric {m!r}")
        v = leaf[m]
        if m in measured:
            _require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{where}.{m} must be an int >= 0")
        else:
            _require(v is None or (isinstance(v, int | float) and not isinstance(v, bool)), f"{where}.{m} bad type")
    a = leaf.get(ALLOCATOR_PEAK)
    _require(
        a is None or (isinstance(a, int) and not isinstance(a, bool) and a >= 0),
        f"{where}.{ALLOCATOR_PEAK} must be null or an int >= 0",
    )
    return leaf["tensor_flops"]


_REQUIRED = {
    "schema": str,
    "schema_version": int,
    "backend": str,
    "device": str,
    "dtype": str,
    "vision_only": bool,
    "complete": bool,
    "workload": dict,
    "received": dict,
    "stages": dict,
    "totals": dict,
    "op_breakdown": dict,
    "calls": list,
    "coverage": dict,
    "environment": dict,
    "timing": dict,
    "memory": dict,
    "secondary": dict,
    "incomplete_reasons": list,
    "measured_metrics": list,
}


def validate_trace_dict(d: Any) -> None:
    """Raise `TraceValidationError` unless ``d`` is a well-formed, self-consistent trace."""
    _check_header(d)
    measured = d["measured_metrics"]
    total = _check_stage_leaves(d, measured)
    _check_decode_steps(d, measured)
    _check_totals(d["totals"], total)
    unc = d["coverage"].get("uncounted_ops")
    _require(isinstance(unc, list) and all(isinstance(x, str) for x in unc), "coverage.uncounted_ops must be list[str]")
    _require(not (unc and d["complete"]), "trace marked complete but coverage.uncounted_ops is not empty")
    _require(d["complete"] or bool(d["incomplete_reasons"]), "incomplete trace must say why (incomplete_reasons)")
    _require(isinstance(d["timing"].get("wall_s"), int | float), "timing.wall_s must be a number")


def _check_header(d: Any) -> None:
    """Every required field with its type, this schema and version, a known device and known metrics."""
    _require(isinstance(d, dict), "document is not an object")
    for key, typ in _REQUIRED.items():
        _require(key in d, f"missing field {key!r}")
        _require(isinstance(d[key], typ), f"field {key!r} must be {typ.__name__}")
    _require(d["schema"] == SCHEMA, f"schema {d['schema']!r} != {SCHEMA!r}")
    _require(
        d["schema_version"] == SCHEMA_VERSION,
        f"schema_version {d['schema_version']} unsupported (this code reads {SCHEMA_VERSION}): re-run the measurement",
    )
    _require(d["device"] in DEVICES, f"device {d['device']!r} not one of {DEVICES}")
    measured = d["measured_metrics"]
    _require("tensor_flops" in measured and set(measured) <= set(METRICS), f"measured_metrics {measured} unknown")


def _check_stage_leaves(d: dict[str, Any], measured: list[str]) -> int:
    """Every stage leaf of the workload's family is well-formed; returns the sum of their tensor FLOPs."""
    stages = d["stages"]
    family = d["workload"].get("model", DEFAULT_FAMILY)
    _require(family in FAMILIES, f"workload.model {family!r} is not one of {', '.join(FAMILIES)}")
    total = 0
    for s in family_vision_stages(family):
        _require(isinstance(stages.get(s), dict), f"stages.{s} missing")
        for b in VISION_BRANCHES:
            total += _check_leaf(stages[s].get(b), f"stages.{s}.{b}", measured)
    for s in LM_STAGES:
        _require(isinstance(stages.get(s), dict), f"stages.{s} missing")
        for p in LM_PARTS:
            total += _check_leaf(stages[s].get(p), f"stages.{s}.{p}", measured)
    return total


def _check_decode_steps(d: dict[str, Any], measured: list[str]) -> None:
    """One step per decode forward, and the steps combine to the decode leaves (allocator peak: their maximum).
    Metric by metric over all steps (a page has thousands) with exact types; where that finds anything else, every
    step leaf goes through `_check_leaf`, which decides (and names the first bad step)."""
    decode = d["stages"]["decode"]
    steps = decode.get("steps")
    _require(isinstance(steps, list), "stages.decode.steps must be a list")
    k = d["received"].get("decode_forwards", 0)
    _require(len(steps) == k, f"stages.decode.steps has {len(steps)} entries, received.decode_forwards says {k}")
    for p in LM_PARTS:
        leaves = [st.get(p) if isinstance(st, dict) else None for st in steps]
        if not all(type(leaf) is dict and leaf.keys() >= _LEAF_KEYS for leaf in leaves):
            _check_each(leaves, p, measured)
        columns = {m: [leaf[m] for leaf in leaves] for m in METRICS}
        allocator = [leaf.get(ALLOCATOR_PEAK) for leaf in leaves]
        if not (
            all(all(type(v) is int and v >= 0 for v in columns[m]) for m in measured)
            and all(all(v is None or type(v) in (int, float) for v in columns[m]) for m in METRICS if m not in measured)
            and all(a is None or (type(a) is int and a >= 0) for a in allocator)
        ):
            _check_each(leaves, p, measured)
        if steps and None not in allocator and decode[p].get(ALLOCATOR_PEAK) is not None:
            _require(
                max(allocator) == decode[p][ALLOCATOR_PEAK],
                f"decode steps' largest {ALLOCATOR_PEAK} {max(allocator)} != stages.decode.{p}'s",
            )
        for m in measured:
            per_step = columns[m]
            if decode[p][m] is None:
                continue
            _require(
                combine(m, per_step) == decode[p][m],
                f"decode steps give {combine(m, per_step)} != stages.decode.{p}.{m} {decode[p][m]}",
            )


_LEAF_KEYS = frozenset(METRICS)


def _check_each(leaves: list[Any], part: str, measured: list[str]) -> None:
    for i, leaf in enumerate(leaves):
        _check_leaf(leaf, f"stages.decode.steps[{i}].{part}", measured)


def _check_totals(totals: dict[str, Any], leaf_sum: int) -> None:
    """The four totals are ints, agree with each other and with the leaves, and nothing ran unattributed."""
    for key in ("counter_total", "stage_sum", "audit_total", "unattributed"):
        _require(isinstance(totals.get(key), int), f"totals.{key} must be an int")
    _require(totals["stage_sum"] == leaf_sum, f"totals.stage_sum {totals['stage_sum']} != sum of leaves {leaf_sum}")
    _require(totals["unattributed"] == 0, f"{totals['unattributed']} FLOPs ran outside every stage root")
    _require(
        totals["stage_sum"] == totals["counter_total"] == totals["audit_total"],
        f"stage sum {totals['stage_sum']} / counter {totals['counter_total']} / audit {totals['audit_total']} differ",
    )
