"""Runs one verification: pages -> workloads -> analytic + vendor -> comparison rows.

Kept free of argparse and console output so it can be driven from Python and
tested; `verify.cli` wraps it.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.families import DEFAULT_FAMILY
from core.schema import family_stages, family_vision_stages
from core.workload import VisionWorkload, WorkloadError
from reports.model import PageResult, PageSpec, RunResult, outcome
from vendor_shim.backends import impl_of
from vendor_shim.errors import InfrastructureError
from verify.compare import Tolerances, compare_stages, received_mismatches


@dataclass
class VerifyConfig:
    """Everything one run depends on (written verbatim into the reports)."""

    command: str
    model: str = DEFAULT_FAMILY  # the model family verified (--model)
    mode: str | None = "gundam"
    base_size: int | None = None
    image_size: int | None = None
    crop_mode: bool | None = None
    prompt_tokens: int = 12
    decode_tokens: int | None = 16  # every page's; None: each page has its own (decode_lengths)
    decode_lengths: str = "fixed"  # verify.lengths: fixed, from-reference or file
    decode_tokens_file: str | None = None
    tokenizer: str | None = None  # from-reference: the tokenizers JSON counting the reference text
    vision_only: bool = False
    backend: str = "hf"
    vendor_dir: str | None = None
    trust_remote_code: bool = False
    device: str = "cpu"
    vision_device: str | None = None  # "meta": count the vision stack shapes-only, run the decoder on `device`
    dtype: str = "float32"  # resolved (never "auto"): see dtype_choice
    dtype_choice: dict[str, str] = field(default_factory=dict)  # requested, dtype, reason (core.dtype_policy)
    execution: str = "shapes"  # resolved: "shapes" (hollow counted ops) or "real"
    lm_head: str | None = None
    attn_impl: str | None = None  # None: the implementation profile's own (eager; paged for vllm)
    decoder_layers: int | None = None  # a shallower decoder (backends with BackendSpec.reduced_depth)
    tolerances: Tolerances = field(default_factory=Tolerances)
    analytic_overrides: list[str] = field(default_factory=list)
    use_cache: bool = True
    cache_dir: str | None = None
    share_steps: bool = True  # decode steps measured once per signature and key count (verify.step_cache)
    jobs: int = 1  # processes measuring missing decode-step ranges side by side (verify.step_workers)
    # the release of the implementation's library the vendor runs (transformers for hf and official), read from the
    # backend once it is known (`VendorMeasurer.impl_version`): picks the analytic profile's release variant
    impl_version: str | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        return family_vision_stages(self.model) if self.vision_only else family_stages(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "tolerances"}
        d["tolerances"] = self.tolerances.to_dict()
        d["stages"] = list(self.stages)
        return d


class VendorFailure(RuntimeError):
    """The vendor run itself failed (exit code 3)."""


def decode_steps(page: PageSpec, cfg: VerifyConfig) -> int:
    """The page's own decode length when it has one (per-page lengths), else the run's; 0 for vision only."""
    if cfg.vision_only:
        return 0
    steps = page.decode_tokens if page.decode_tokens is not None else cfg.decode_tokens
    if steps is None:
        raise WorkloadError(f"page {page.page_id!r} has no decode length: give --decode-tokens N")
    return steps


def build_workload(page: PageSpec, cfg: VerifyConfig) -> VisionWorkload:
    return VisionWorkload.from_page(
        page.width,
        page.height,
        cfg.mode,
        base_size=cfg.base_size,
        image_size=cfg.image_size,
        crop_mode=cfg.crop_mode,
        prompt_tokens=cfg.prompt_tokens,
        decode_tokens=decode_steps(page, cfg),
        dtype=cfg.dtype,
        lm_head_scope=cfg.lm_head,  # None: the backend's own behaviour (official: all, hf generate: last)
        impl=impl_of(cfg.backend),
        impl_version=cfg.impl_version,
        attn_impl=cfg.attn_impl,
        model=cfg.model,
    )


MeasureFn = Callable[[VisionWorkload, PageSpec], tuple[dict[str, Any], bool]]


@dataclass
class Verifier:
    """Holds what is built once per run: the analytic graph and the vendor measurer."""

    cfg: VerifyConfig
    measure: MeasureFn  # (workload, page) -> (trace dict, cache_hit)
    cost_model: Any  # analytic.model.CostModel

    def prepare(self, page: PageSpec) -> tuple[PageResult, VisionWorkload | None]:
        """Check the page's image and build its workload; input problems fail this page only."""
        from verify.images import PageImageError
        from verify.pages import checked_page

        result = PageResult(page=page)
        try:
            page = result.page = checked_page(page)
            workload = build_workload(page, self.cfg)
        except (PageImageError, WorkloadError) as exc:
            return _failed(result, "input", str(exc)), None
        result.workload = workload.to_dict()
        return result, workload

    def at_release(
        self, prepared: list[tuple[PageResult, VisionWorkload | None]]
    ) -> list[tuple[PageResult, VisionWorkload | None]]:
        """``prepared`` pages with the library release ``cfg.impl_version`` in their workloads (it is known once
        the backend is: after the pages were checked)."""
        out = []
        for res, wl in prepared:
            if wl is not None and wl.impl_version != self.cfg.impl_version:
                wl = dataclasses.replace(wl, impl_version=self.cfg.impl_version)
                res.workload = wl.to_dict()
            out.append((res, wl))
        return out

    def finish(self, result: PageResult, workload: VisionWorkload) -> PageResult:
        """Analytic estimate, vendor trace (cached), the estimate again on the vendor's routing if it differs
        from the balanced one assumed, comparison.  A broken analytic model never costs a vendor run."""
        try:
            estimate = self.cost_model.estimate(workload)
        except (Exception, SystemExit) as exc:  # the analytic model must never take the run down, nor end it
            return _failed(result, "analytic", f"analytic model failed: {_reason(exc)}")
        result.analytic = estimate.to_dict()
        try:
            trace, result.cache_hit = self.measure(workload, result.page)
        except VendorFailure as exc:
            return _failed(result, "vendor", str(exc))
        result.trace = trace
        routed = with_vendor_routing(workload, trace)
        if routed != workload:
            try:
                estimate = self.cost_model.estimate(routed)
            except (Exception, SystemExit) as exc:
                return _failed(result, "analytic", f"analytic model failed on the vendor's routing: {_reason(exc)}")
            result.workload, result.analytic = routed.to_dict(), estimate.to_dict()
        return self._compare(result, estimate, trace)

    def _compare(self, result: PageResult, estimate: Any, trace: dict) -> PageResult:
        mismatches = received_mismatches(result.workload or {}, trace.get("received", {}))
        if mismatches:
            return _failed(result, "vendor", "vendor received a different workload: " + "; ".join(mismatches))
        uncounted = trace.get("coverage", {}).get("uncounted_ops", [])
        if uncounted or not trace.get("complete", True):
            names = ", ".join(map(str, uncounted)) or "?"  # the trace lists op names
            return _failed(result, "coverage", f"counter coverage incomplete, uncounted ops: {names}")
        result.rows = compare_stages(
            result.page.page_id,
            trace["stages"],
            estimate.stages,
            self.cfg.tolerances,
            self.cfg.stages,
            vendor_families=trace_families(trace),
            analytic_families=getattr(estimate, "families", None),
            gated=gated_metrics(estimate, trace, self.cfg.stages),
            vendor_ops=trace.get("op_breakdown"),
        )
        return result


def with_vendor_routing(workload: VisionWorkload, trace: dict) -> VisionWorkload:
    """The workload with the experts the vendor's prefill actually hit (bytes depend on routing, FLOPs do not)."""
    hits = (trace.get("received", {}).get("routing") or {}).get("prefill_experts_hit")
    if not hits:
        return workload
    return dataclasses.replace(workload, prefill_experts_hit=tuple(int(h) for h in hits))


def gated_metrics(estimate: Any, trace: dict, stages: tuple[str, ...]) -> tuple[str, ...]:
    """``STAGE.METRIC`` leaves both sides stand behind: measured by the vendor and modeled op by op by the profile
    on that stage of the run's family (`core.profiles.gated_leaves`)."""
    from core.profiles import gated_leaves

    profile = (getattr(estimate, "model", None) or {}).get("profile") or {}
    return gated_leaves(
        profile.get("modeled_metrics", ["tensor_flops"]),
        profile.get("flops_only_stages", []),
        stages,
        trace.get("measured_metrics", ["tensor_flops"]),
    )


def trace_families(trace: dict) -> dict[str, dict[str, dict[str, float]]]:
    """stage -> part -> op family -> flops, from the trace's per-op breakdown."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stage, parts in trace.get("op_breakdown", {}).items():
        for part, ops in parts.items():
            fams = out.setdefault(stage, {}).setdefault(part, {})
            for cell in ops.values():  # the harness stored each op's family with it (core.schema.aten_family)
                fams[cell["family"]] = fams.get(cell["family"], 0) + cell["flops"]
    return out


def _reason(exc: BaseException) -> str:
    """An exception's message, or its repr when it has none (SystemExit(0) says nothing)."""
    return str(exc) if str(exc) and not isinstance(exc, SystemExit) else repr(exc)


def _failed(result: PageResult, kind: str, message: str) -> PageResult:
    result.error, result.error_kind = message, kind
    return result


def run_pages(
    verifier: Verifier,
    pages: list[PageSpec],
    environment: dict[str, Any],
    on_page: Callable[[PageResult], None] | None = None,
    prepared: list[tuple[PageResult, VisionWorkload | None]] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> RunResult:
    """Verify `pages`; `prepared` is `[verifier.prepare(p) for p in pages]` when the caller checked them already;
    ``on_note`` hears, in one line, what the measurer does before the first page (when it does anything)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    # platform.platform() forks `uname`: ask before the model is built, so the child is small
    host = {"python": platform.python_version(), "platform": platform.platform()}
    if prepared is None:
        prepared = [verifier.prepare(page) for page in pages]
    prefetch = getattr(verifier.measure, "prefetch", None)
    if prefetch is not None:  # every distinct workload in one worker (out of process), or the decode steps first
        prefetch([wl for _, wl in prepared if wl is not None], notify=on_note)
    results = []
    for res, workload in prepared:
        if workload is not None:
            try:
                res = verifier.finish(res, workload)
            except InfrastructureError:
                raise  # the machine's setup (cache, pinned environment), not this page: the caller names it
            except (Exception, SystemExit) as exc:  # one page never loses the others; sys.exit() ends no run
                res = _failed(res, "vendor", f"{type(exc).__name__}: {exc}")
                res.trace = {"traceback": traceback.format_exc()}
        results.append(res)
        if on_page:
            on_page(res)
    finished = datetime.now(UTC)
    late = getattr(verifier.measure, "final_environment", None)  # e.g. a cache write that failed mid-run
    return RunResult(
        run_id=started.strftime("%Y%m%d-%H%M%S"),
        command=verifier.cfg.command,
        config=verifier.cfg.to_dict(),
        environment={**host, **environment, **(late() if late else {})},
        pages=results,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"),
        wall_s=round(time.perf_counter() - t0, 3),
    )


def exit_code(run: RunResult) -> int:
    """1 discrepancy (or incomplete count) > 3 vendor failure > 2 bad page input > 0 (`reports.model.outcome`)."""
    return outcome(run.pages)[1]


__all__ = ["VendorFailure", "Verifier", "VerifyConfig", "build_workload", "exit_code", "run_pages"]
