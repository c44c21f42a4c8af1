"""The result of a run (rows, pages, run metadata): what the verifier produces and the reports render."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ComparisonRow:
    """One page x stage x part x metric comparison."""

    page_id: str
    stage: str  # sam | clip | projector | prefill | decode
    part: str  # global | crops | decoder | lm_head
    metric: str  # tensor_flops, ...
    vendor: float | None  # None: the vendor side has no measured counterpart yet
    analytic: float
    abs_delta: float | None
    rel_delta: float | None
    tolerance: float | None  # None: reported only, not gated
    passed: bool | None  # None: not gated
    gap_family: str | None = None  # op family carrying the gap, for failures
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PageSpec:
    """One input page: where it came from and its geometry."""

    page_id: str
    width: int
    height: int
    source: str  # "embedded" | "omnidocbench" | "files"
    image_path: str | None = None
    synthetic: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the image could not be read at load time; the run records it for this page
    # this page's decode steps when lengths are per page (core.decode_lengths); None: the run's --decode-tokens
    decode_tokens: int | None = None
    # the page's reference transcription (OmniDocBench layout elements), kept only until its decode length is
    # known (verify.lengths drops it), so reports never carry whole pages of text
    reference_text: str | None = None


@dataclass
class PageResult:
    page: PageSpec
    workload: dict[str, Any] | None = None
    rows: list[ComparisonRow] = field(default_factory=list)
    error: str | None = None  # set when the page could not be verified
    error_kind: str | None = None  # "input" | "vendor" | "analytic"
    trace: dict[str, Any] | None = None
    analytic: dict[str, Any] | None = None
    cache_hit: bool = False

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.passed is not False for r in self.rows)


@dataclass
class RunResult:
    run_id: str
    command: str  # run_verify_end2end | run_verify_end2end_vision
    config: dict[str, Any]
    environment: dict[str, Any]
    pages: list[PageResult]
    started_at: str
    finished_at: str
    wall_s: float

    @property
    def verdict(self) -> str:
        """PASS, FAIL, INCOMPLETE COUNT or ERROR: the same story as the exit code (see `outcome`)."""
        return outcome(self.pages)[0]


def outcome(pages: list[PageResult]) -> tuple[str, int]:
    """(verdict, exit code) of a run, decided once so the reports and the exit code never disagree.

    FAIL (1): a stage outside tolerance, or the analytic model failed on a page.
    INCOMPLETE COUNT (1): the counter audit found executed work without a formula.
    ERROR (3): the vendor run failed; ERROR (2): a page's input was bad.  PASS (0) otherwise.
    The first that applies wins.
    """
    kinds = {p.error_kind for p in pages if p.error}
    if any(r.passed is False for p in pages for r in p.rows) or "analytic" in kinds:
        return "FAIL", 1
    if "coverage" in kinds:
        return "INCOMPLETE COUNT", 1
    if "vendor" in kinds:
        return "ERROR", 3
    if kinds:
        return "ERROR", 2
    return "PASS", 0
