"""Formula-only cost model of DeepSeek-OCR. Pure Python: never imports torch or vendor code."""

from analytic.model import CostModel, Estimate, build_cost_model, estimate
from core.families import MODES, ModePreset
from core.metrics import METRICS
from core.schema import STAGES
from core.workload import (
    ProjectorTokens,
    ViewLayout,
    VisionWorkload,
    WorkloadError,
    compute_num_queries,
    compute_projector_tokens,
    compute_view_layout,
)

__all__ = [
    "METRICS",
    "MODES",
    "STAGES",
    "CostModel",
    "Estimate",
    "ModePreset",
    "ProjectorTokens",
    "ViewLayout",
    "VisionWorkload",
    "WorkloadError",
    "build_cost_model",
    "compute_num_queries",
    "compute_projector_tokens",
    "compute_view_layout",
    "estimate",
]
