"""Names shared by the analytic JSON, the vendor trace and the comparator.

Both sides emit `stages` with exactly this nesting so they can be diffed leaf by
leaf: ``stages[stage][part][metric]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

VISION_STAGES = ("sam", "clip", "projector")
VISION_BRANCHES = ("global", "crops")
LM_STAGES = ("prefill", "decode")
LM_PARTS = ("decoder", "lm_head")
STAGES = VISION_STAGES + LM_STAGES

METRICS = (
    "tensor_flops",
    "elementwise_flops",
    "io_bytes",
    "weight_bytes",
    "activation_bytes",
    "kv_cache_bytes",
)


def stage_parts(stage: str) -> tuple[str, ...]:
    """The leaves under one stage: branches for vision stages, decoder/lm_head for LM stages."""
    if stage in VISION_STAGES:
        return VISION_BRANCHES
    if stage in LM_STAGES:
        return LM_PARTS
    raise KeyError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def leaf_paths(stages: tuple[str, ...] = STAGES) -> list[tuple[str, str]]:
    """Every (stage, part) leaf in report order."""
    return [(s, p) for s in stages for p in stage_parts(s)]


@dataclass
class Metrics:
    """Per-call (or summed) cost metrics. FLOPs: 2 per multiply-add."""

    tensor_flops: int = 0
    elementwise_flops: int = 0
    io_bytes: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    kv_cache_bytes: int = 0

    def __add__(self, other: Metrics) -> Metrics:
        return Metrics(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __iadd__(self, other: Metrics) -> Metrics:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def scaled(self, k: int) -> Metrics:
        return Metrics(*(getattr(self, f.name) * k for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# Op families: the level at which analytic records and counted aten ops meet, so a
# gap points at a term.  Each analytic op record names the family of the aten op the
# implementation really executes; the vendor per-op breakdown is grouped the same way.
ATEN_FAMILY = {
    "mm": "mm",
    "addmm": "mm",
    "_grouped_mm": "mm",
    "bmm": "bmm",
    "baddbmm": "bmm",
    "convolution": "conv",
    "_convolution": "conv",
    "_scaled_dot_product_efficient_attention": "sdpa",
    "_scaled_dot_product_flash_attention": "sdpa",
    "_scaled_dot_product_flash_attention_for_cpu": "sdpa",
    "_scaled_dot_product_cudnn_attention": "sdpa",
    "_flash_attention_forward": "sdpa",
    "_efficient_attention_forward": "sdpa",
}
OP_FAMILIES = ("mm", "bmm", "conv", "sdpa", "other")


def aten_family(op_name: str) -> str:
    """'aten.addmm.default' / 'addmm' -> 'mm'; unknown ops -> 'other'."""
    base = op_name.split(".")[1] if op_name.startswith("aten.") else op_name.split(".")[0]
    return ATEN_FAMILY.get(base, "other")
