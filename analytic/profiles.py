"""Implementation profiles: the FLOP-bearing details in which real implementations differ.

Both profiles share the architecture and the dimensions; each field below names the code
location it mirrors (see `ImplProfile.references`, also printed in `Estimate.to_dict()["model"]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from analytic.schema import LM_HEAD_SCOPES, METRICS

PROFILE_DIR = Path(__file__).resolve().parent / "configs" / "profiles"

ROPE_MODES = ("per_layer_matmul", "once_elementwise")
CLIP_QKV_MODES = ("fused", "separate")
EXPERT_MODES = ("per_expert_mlp", "eager", "grouped_mm", "batched_mm")
VISION_ATTN_MODES = ("sdpa", "eager")


class ProfileError(ValueError):
    """An implementation profile or its use is inconsistent; the message names the fix."""


@dataclass(frozen=True)
class ImplProfile:
    """How one implementation executes the shared architecture.

    rope: `per_layer_matmul` = rotary frequencies recomputed in every decoder layer with a
      (B, D/2, 1) @ (B, 1, S) bmm (counted); `once_elementwise` = computed once per decoder
      forward with an elementwise product (not counted).
    clip_qkv: CLIP attention input projection as one fused Linear(C, 3C) or three Linear(C, C).
    experts: how routed experts run: `per_expert_mlp` (a loop of gate/up/down nn.Linear per hit
      expert), `eager` (a loop of fused gate_up F.linear + down F.linear), `grouped_mm`
      (two aten._grouped_mm), `batched_mm` (two bmm over token-expert pairs).
    vision_attention: `sdpa` (F.scaled_dot_product_attention) or `eager` (two matmuls).
    decoder_attn_impls: the decoder attention implementations it accepts (workload.attn_impl);
      eager = two matmuls (bmm family), sdpa = one attention kernel (sdpa family; flash-attn
      counted with the same formula).
    supports_mla: whether the decoder class implements multi-head latent attention.
    modeled_metrics: the metrics this profile follows op by op as the implementation executes them
      (gated against the vendor), as ``METRIC`` (every stage) or ``STAGE.METRIC``; the others are
      estimates under the model's own conventions, reported next to the measured figure until the
      profile models the code's copies and casts.
    """

    name: str
    rope: str
    clip_qkv: str
    experts: str
    vision_attention: str
    decoder_attn_impls: tuple[str, ...]
    supports_mla: bool
    lm_head_default: str
    modeled_metrics: tuple[str, ...] = ("tensor_flops",)
    references: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            ("rope", self.rope, ROPE_MODES),
            ("clip_qkv", self.clip_qkv, CLIP_QKV_MODES),
            ("experts", self.experts, EXPERT_MODES),
            ("vision_attention", self.vision_attention, VISION_ATTN_MODES),
            ("lm_head_default", self.lm_head_default, LM_HEAD_SCOPES),
        )
        for label, value, allowed in checks:
            if value not in allowed:
                raise ProfileError(f"profile {self.name}: {label}={value!r} unknown; use one of {', '.join(allowed)}")
        object.__setattr__(self, "decoder_attn_impls", tuple(self.decoder_attn_impls))
        object.__setattr__(self, "modeled_metrics", tuple(self.modeled_metrics))
        unknown = [m for m in self.modeled_metrics if m.rpartition(".")[2] not in METRICS or m.count(".") > 1]
        if unknown or "tensor_flops" not in self.modeled_metrics:
            raise ProfileError(
                f"profile {self.name}: modeled_metrics must include tensor_flops and name only METRIC or STAGE.METRIC "
                f"with METRIC in {', '.join(METRICS)}"
            )
        object.__setattr__(self, "references", dict(self.references))

    def decoder_attention_family(self, attn_impl: str) -> str:
        if attn_impl not in self.decoder_attn_impls:
            allowed = ", ".join(self.decoder_attn_impls)
            raise ProfileError(f"profile {self.name} has no decoder attention {attn_impl!r}; use one of {allowed}")
        return "bmm" if attn_impl == "eager" else "sdpa"

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "rope": self.rope,
            "clip_qkv": self.clip_qkv,
            "experts": self.experts,
            "vision_attention": self.vision_attention,
            "decoder_attn_impls": list(self.decoder_attn_impls),
            "supports_mla": self.supports_mla,
            "lm_head_default": self.lm_head_default,
            "modeled_metrics": list(self.modeled_metrics),
            "references": dict(self.references),
        }


@cache
def profile_names() -> tuple[str, ...]:
    """Implementation profiles that exist: one YAML each under configs/profiles/ (the one list of them)."""
    return tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))


@cache
def profile_lm_head_default(impl: str) -> str:
    """The profile's own lm_head scope (its YAML's ``lm_head_default``): what a workload uses unless told."""
    if impl not in profile_names():
        raise ProfileError(f"no profile {impl!r}: use one of {', '.join(profile_names())}")
    value = OmegaConf.load(PROFILE_DIR / f"{impl}.yaml").get("lm_head_default")
    if value not in LM_HEAD_SCOPES:
        raise ProfileError(f"profiles/{impl}.yaml: lm_head_default={value!r}; use one of {', '.join(LM_HEAD_SCOPES)}")
    return str(value)
