"""Names shared by the analytic JSON, the vendor trace and the comparator.

Both sides emit `stages` with exactly this nesting so they can be diffed leaf by
leaf: ``stages[stage][part][metric]``.
"""

from __future__ import annotations

VISION_STAGES = ("sam", "clip", "projector")
VISION_BRANCHES = ("global", "crops")
LM_STAGES = ("prefill", "decode")
LM_PARTS = ("decoder", "lm_head")
STAGES = VISION_STAGES + LM_STAGES
LM_HEAD_SCOPES = ("all", "last")  # prefill lm_head over every position, or the last one only
ATTN_IMPLS = ("eager", "sdpa")  # decoder attention: two matmuls, or one attention kernel

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
