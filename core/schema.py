"""Names shared by the analytic JSON, the vendor trace and the comparator.

Both sides emit `stages` with exactly this nesting so they can be diffed leaf by
leaf: ``stages[stage][part][metric]``.
"""

from __future__ import annotations

from core.families import DEFAULT_FAMILY, FAMILY_TABLE, family

# Model families: core.families (each declared once); their vision stages, by name.
FAMILY_VISION_STAGES = {f.name: f.vision_stages for f in FAMILY_TABLE}

VISION_STAGES = FAMILY_VISION_STAGES[DEFAULT_FAMILY]
ALL_VISION_STAGES = tuple(dict.fromkeys(s for stages in FAMILY_VISION_STAGES.values() for s in stages))
VISION_BRANCHES = ("global", "crops")
LM_STAGES = ("prefill", "decode")
LM_PARTS = ("decoder", "lm_head")
STAGES = VISION_STAGES + LM_STAGES
LM_HEAD_SCOPES = ("all", "last")  # prefill lm_head over every position, or the last one only
ATTN_IMPLS = ("eager", "sdpa", "paged")  # decoder attention: two matmuls, one attention kernel, or vLLM's paged
# attention kernel over its block K/V cache (one kernel, like sdpa)

# The metrics (the third level of a leaf) are declared once: core.metrics.


def check_family(name: str) -> str:
    """`name` itself, or a one-line error naming the families that exist."""
    return family(name).name


def family_vision_stages(family: str = DEFAULT_FAMILY) -> tuple[str, ...]:
    """The vision stages of one family, in pipeline order."""
    return FAMILY_VISION_STAGES[check_family(family)]


def family_stages(family: str = DEFAULT_FAMILY) -> tuple[str, ...]:
    """Every stage of one family in report order: its vision stages, then prefill and decode."""
    return family_vision_stages(family) + LM_STAGES


def stage_parts(stage: str) -> tuple[str, ...]:
    """The leaves under one stage: branches for vision stages, decoder/lm_head for LM stages."""
    if stage in ALL_VISION_STAGES:
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
    "_scaled_dot_product_fused_attention_overrideable": "sdpa",
    "_flash_attn_forward": "sdpa",  # flash-attn 2's custom ops (flash_attn:: / flashattn::)
    "_flash_attn_varlen_forward": "sdpa",
    "grouped_mm_fallback": "mm",  # transformers::grouped_mm_fallback
}
OP_FAMILIES = ("mm", "bmm", "conv", "sdpa", "other")


def aten_family(op_name: str) -> str:
    """'aten.addmm.default' / 'addmm' / 'flash_attn._flash_attn_forward.default' -> its family; unknown -> 'other'.
    A name of three parts or more is namespace.op.overload; of one or two, op[.overload]."""
    parts = op_name.split(".")
    base = parts[1] if len(parts) >= 3 or op_name.startswith("aten.") else parts[0]
    return ATEN_FAMILY.get(base, "other")
