"""Implementation profiles: the FLOP-bearing details in which real implementations differ.

Both profiles share the architecture and the dimensions; each field below names the code
location it mirrors (see `ImplProfile.references`, also printed in `Estimate.to_dict()["model"]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.metrics import METRICS
from core.schema import LM_HEAD_SCOPES

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

ROPE_MODES = ("per_layer_matmul", "once_elementwise")
CLIP_QKV_MODES = ("fused", "separate")
EXPERT_MODES = ("per_expert_mlp", "eager", "grouped_mm", "batched_mm")
VISION_ATTN_MODES = ("sdpa", "eager")
REL_POS_TABLE_MODES = ("interpolate_always", "gather_when_sized")
CAUSAL_MASK_MODES = ("where_twice", "where_once", "prepare_4d")
CACHE_UPDATE_MODES = ("cat_always", "append_then_cat")
SDPA_OUTPUT_MODES = ("contiguous", "like_query")
SAM_QKV_MODES = ("permute_copy", "merged_reshape")
SAM_REL_BIAS_MODES = ("contiguous", "reshaped_terms")
RESIZE_CAST_MODES = ("always", "when_not_float32")
CLIP_POSITION_MODES = ("resize_table", "gather_then_resize")
NECK_NORM_MODES = ("layer_norm", "mean_var")
EAGER_PROBS_MODES = ("kept_by_layer", "dropped_by_attention")
ENCODER_MASK_MODES = ("bool_block_overlay", "float_index_put")
NORM_STATS_MODES = ("float32", "dtype")
ROUTER_WEIGHT_MODES = ("model_dtype", "float32")


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
    rel_pos_table: how SAM's get_rel_pos reads a relative-position table: `interpolate_always` (transformers: a
      linear resize of the whole table in the model's dtype, even to its own size) or `gather_when_sized`
      (official: rows gathered straight from the table when it already has 2 x side - 1 rows, else the table
      cast to float32, resized and cast back, as `vision_resize_casts` says).
    embed_in_decoder: whether the token embedding gather runs inside the decoder stage root.
    causal_mask: how each decoder forward builds its (q x keys) attention mask: `where_twice`
      (transformers 5 masking_utils, DeepSeek-OCR's model: a full and a reference sliding-window mask, two
      torch.where over q x keys), `where_once` (DeepSeek-OCR 2's model: one `create_causal_mask`, built op by
      op) or `prepare_4d` (4.46
      `_prepare_4d_causal_attention_mask`: a masked_fill_ over q x q when q > 1, then rsub and
      masked_fill over q x keys, and a second masked_fill when q > 1).
    cache_update: how the KV cache grows: `cat_always` (transformers 5 `DynamicLayer.update`: every
      forward writes the whole cache anew with torch.cat, the prefill's from an empty tensor) or
      `append_then_cat` (4.46 `DynamicCache.update`: the prefill's K/V are kept as they are, every
      later forward cats).
    image_presence_sums: whether the prefill sums the pixel tensors to test for an image
      (official `torch.sum(images[0][1]).item() != 0` and `torch.sum(patches)`).
    image_merge_in_decoder: whether the decoder stage root lays the projected views out itself
      (official `DeepseekOCRModel.forward`: the CLIP/SAM feature cat of each view, the newline cats,
      the crop grid's permute copy, cat([crops, global, separator]), the per-batch cat and
      `inputs_embeds[idx].masked_scatter_`).
    vision_sdpa_output: the layout of the vision SDPA output, which decides whether the code's
      permute + reshape after it copies: `contiguous` ((B, H, S, D): the math kernel of the meta
      device, so the copy always happens) or `like_query` (the CPU kernel returns the query's layout:
      no copy when q is a strided view of the qkv projection).
    sam_qkv: how SAM's attention splits q, k, v: `permute_copy` (the permuted qkv made contiguous:
      one copy, q strided for the rel-pos einsums of a global block) or `merged_reshape` (official
      `qkv.reshape(3, B * nHead, H * W, -1)` of the permuted qkv: a copy only when B > 1 windows or
      views, q contiguous after it).
    sam_rel_pos_bias: how the decomposed rel-pos terms become SDPA's mask: `contiguous`
      (rel_h[..., None] + rel_w[..., None, :] made contiguous) or `reshaped_terms` (official
      `add_decomposed_rel_pos` reshapes both einsum outputs (two copies), their sum is the mask).
    vision_resize_casts: the float32 round trip around SAM/CLIP position resizes: `always` or
      `when_not_float32` (official `.to(torch.float32)` / `.to(dtype)`: no copy in float32).
    clip_positions: `resize_table` (the trained table read by the resize / cast) or
      `gather_then_resize` (official `get_abs_pos(self.position_embedding(self.position_ids))`: an
      embedding gather of every position, the grid rows made contiguous before the resize, cat of
      the CLS row).
    sam_neck_norm: the neck's LayerNorm2d: `layer_norm` (one native_layer_norm) or `mean_var`
      (official `LayerNorm2d.forward`: mean, sub, pow, mean, sub, add, sqrt, div, mul, add).
    sam_net3_clone: whether net_3 reads a clone of net_2's output (official `self.net_3(x2.clone())`).
    eager_probs: how long the eager decoder attention's probabilities live (liveness only): `kept_by_layer`
        (transformers 5: returned as `attn_weights`, which the decoder layer holds until it returns) or
        `dropped_by_attention` (4.46 LlamaAttention.forward: `attn_weights = None` after o_proj when attentions
        are not output).
    layer_norm_stats: the dtype of the mean and rstd `native_layer_norm` writes next to its output: `float32`
        (the meta and CUDA kernels) or `dtype` (the CPU kernel keeps a bfloat16 input's statistics in bfloat16):
        the device the implementation's vision is counted on (hf: meta; official: CPU).
    encoder_mask: how DeepSeek-OCR 2's encoder builds its mixed mask (bidirectional over the image tokens, causal
        over the queries): `bool_block_overlay` (transformers 5 `create_causal_mask(block_sequence_ids=...)`: a
        (B, 1, L, L) bool mask from the causal comparison OR'ed with the same-block overlay) or `float_index_put`
        (official deepencoderv2.py `_update_causal_mask` override: a float (B, 1, L, L) mask in the model's dtype,
        filled with the dtype's minimum and opened row by row with `index_put_`; the token_type_ids it reads stay
        bound to the model as an attribute until its next call).
    encoder_nests_sam: whether the encoder stage's root runs SAM inside it (transformers' vision tower), so SAM's
        output is allocated after the stage's entry and counts in its live bytes (official: siblings).
    encoder_kv_cache: whether the encoder's Qwen2 model keeps a KV cache it never reads (4.46.3 `Qwen2Model`:
        `use_cache` defaults to the config's True, so a DynamicCache holds every layer's keys and values until the
        forward returns).
    router_weight: the dtype the MoE router's weight is kept in: `model_dtype` (transformers <= 5.23, official:
        the router's F.linear(x.float(), weight.float()) casts it, a float32 copy the mm reads) or `float32`
        (transformers >= 5.24: created float32 and kept so by `_keep_in_fp32_modules_strict`; no cast, the mm reads
        the float32 weight, and the resident weights hold it at 4 bytes an element).
    variant: the library release the profile's fields mirror (`core.releases`: 'hf@5.24'); empty for a
        profile built from its YAML alone (the table's `base`).
    modeled_metrics: the metrics this profile follows op by op as the implementation executes them
      (gated against the vendor), as ``METRIC`` (every stage) or ``STAGE.METRIC``; the others are
      estimates under the model's own conventions, reported next to the measured figure until the
      profile models the code's copies and casts.  A bare ``METRIC`` covers every stage except those in
      ``flops_only_stages`` (`gated_leaves` resolves the list for the stages of one run).
    flops_only_stages: stages whose only modeled metric is ``tensor_flops``: a new stage whose bytes and
      elementwise work are not modeled yet is measured and reported there, never gated (none today).
    """

    name: str
    rope: str
    clip_qkv: str
    experts: str
    vision_attention: str
    decoder_attn_impls: tuple[str, ...]
    supports_mla: bool
    lm_head_default: str
    rel_pos_table: str = "interpolate_always"
    embed_in_decoder: bool = True
    causal_mask: str = "where_twice"
    cache_update: str = "cat_always"
    image_presence_sums: bool = False
    image_merge_in_decoder: bool = False
    vision_sdpa_output: str = "contiguous"
    sam_qkv: str = "permute_copy"
    sam_rel_pos_bias: str = "contiguous"
    vision_resize_casts: str = "always"
    clip_positions: str = "resize_table"
    sam_neck_norm: str = "layer_norm"
    sam_net3_clone: bool = False
    eager_probs: str = "kept_by_layer"
    layer_norm_stats: str = "float32"
    encoder_mask: str = "bool_block_overlay"
    encoder_nests_sam: bool = False
    encoder_kv_cache: bool = False
    router_weight: str = "model_dtype"
    crop_max: int | None = None  # the most crops its preprocessing makes (vLLM: 6); None: the family's rule
    variant: str = ""
    modeled_metrics: tuple[str, ...] = ("tensor_flops",)
    flops_only_stages: tuple[str, ...] = ()
    references: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            ("rope", self.rope, ROPE_MODES),
            ("clip_qkv", self.clip_qkv, CLIP_QKV_MODES),
            ("experts", self.experts, EXPERT_MODES),
            ("vision_attention", self.vision_attention, VISION_ATTN_MODES),
            ("lm_head_default", self.lm_head_default, LM_HEAD_SCOPES),
            ("rel_pos_table", self.rel_pos_table, REL_POS_TABLE_MODES),
            ("causal_mask", self.causal_mask, CAUSAL_MASK_MODES),
            ("cache_update", self.cache_update, CACHE_UPDATE_MODES),
            ("vision_sdpa_output", self.vision_sdpa_output, SDPA_OUTPUT_MODES),
            ("sam_qkv", self.sam_qkv, SAM_QKV_MODES),
            ("sam_rel_pos_bias", self.sam_rel_pos_bias, SAM_REL_BIAS_MODES),
            ("vision_resize_casts", self.vision_resize_casts, RESIZE_CAST_MODES),
            ("clip_positions", self.clip_positions, CLIP_POSITION_MODES),
            ("sam_neck_norm", self.sam_neck_norm, NECK_NORM_MODES),
            ("eager_probs", self.eager_probs, EAGER_PROBS_MODES),
            ("encoder_mask", self.encoder_mask, ENCODER_MASK_MODES),
            ("layer_norm_stats", self.layer_norm_stats, NORM_STATS_MODES),
            ("router_weight", self.router_weight, ROUTER_WEIGHT_MODES),
        )
        for label, value, allowed in checks:
            if value not in allowed:
                raise ProfileError(f"profile {self.name}: {label}={value!r} unknown; use one of {', '.join(allowed)}")
        object.__setattr__(self, "decoder_attn_impls", tuple(self.decoder_attn_impls))
        object.__setattr__(self, "modeled_metrics", tuple(self.modeled_metrics))
        object.__setattr__(self, "flops_only_stages", tuple(self.flops_only_stages))
        clash = [m for m in self.modeled_metrics if m.partition(".")[0] in self.flops_only_stages and "." in m]
        if clash:
            raise ProfileError(f"profile {self.name}: {', '.join(clash)} gate a stage listed in flops_only_stages")
        unknown = [m for m in self.modeled_metrics if m.rpartition(".")[2] not in METRICS or m.count(".") > 1]
        if unknown or "tensor_flops" not in self.modeled_metrics:
            raise ProfileError(
                f"profile {self.name}: modeled_metrics must include tensor_flops and name only METRIC or STAGE.METRIC "
                f"with METRIC in {', '.join(METRICS)}"
            )
        object.__setattr__(self, "references", dict(self.references))

    @property
    def key(self) -> str:
        """The profile and its release variant: what memoised estimates are keyed by."""
        return self.variant or self.name

    def norm_stats_bytes(self, db: int) -> int:
        """Bytes of one LayerNorm mean (or rstd) value at the model's dtype ``db`` (see ``layer_norm_stats``)."""
        return db if self.layer_norm_stats == "dtype" else 4

    def decoder_attention_family(self, attn_impl: str) -> str:
        if attn_impl not in self.decoder_attn_impls:
            allowed = ", ".join(self.decoder_attn_impls)
            raise ProfileError(f"profile {self.name} has no decoder attention {attn_impl!r}; use one of {allowed}")
        return "bmm" if attn_impl == "eager" else "sdpa"  # sdpa and paged: one kernel over the full q x keys

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
            "rel_pos_table": self.rel_pos_table,
            "embed_in_decoder": self.embed_in_decoder,
            "causal_mask": self.causal_mask,
            "cache_update": self.cache_update,
            "image_presence_sums": self.image_presence_sums,
            "image_merge_in_decoder": self.image_merge_in_decoder,
            "vision_sdpa_output": self.vision_sdpa_output,
            "sam_qkv": self.sam_qkv,
            "sam_rel_pos_bias": self.sam_rel_pos_bias,
            "vision_resize_casts": self.vision_resize_casts,
            "clip_positions": self.clip_positions,
            "sam_neck_norm": self.sam_neck_norm,
            "sam_net3_clone": self.sam_net3_clone,
            "eager_probs": self.eager_probs,
            "layer_norm_stats": self.layer_norm_stats,
            "encoder_mask": self.encoder_mask,
            "encoder_nests_sam": self.encoder_nests_sam,
            "encoder_kv_cache": self.encoder_kv_cache,
            "router_weight": self.router_weight,
            "crop_max": self.crop_max,
            "variant": self.variant,
            "modeled_metrics": list(self.modeled_metrics),
            "flops_only_stages": list(self.flops_only_stages),
            "references": dict(self.references),
        }


def gated_leaves(
    modeled: list[str] | tuple[str, ...],
    flops_only_stages: list[str] | tuple[str, ...],
    stages: tuple[str, ...],
    measured: list[str] | tuple[str, ...],
) -> tuple[str, ...]:
    """The ``STAGE.METRIC`` entries a run gates: the profile's ``modeled_metrics`` resolved over ``stages`` (a bare
    ``METRIC`` reaches every stage but the ``flops_only_stages``, which gate ``tensor_flops`` only), limited to
    the metrics the vendor ``measured``."""
    out: list[str] = []
    for stage in stages:
        for metric in METRICS:
            modeled_here = stage not in flops_only_stages and (metric in modeled or f"{stage}.{metric}" in modeled)
            if metric in measured and (metric == "tensor_flops" or modeled_here):
                out.append(f"{stage}.{metric}")
    return tuple(out)


@cache
def profile_names() -> tuple[str, ...]:
    """Implementation profiles that exist: one YAML each under configs/profiles/ (the one list of them)."""
    return tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))


def profile_configs() -> dict[str, Any]:
    """Every profile YAML by name, as its file states it: the analytic configs compose them all (`profile_set`),
    so a new profile is one file here (plus its release table), named by no family config."""
    return {name: OmegaConf.to_container(OmegaConf.load(PROFILE_DIR / f"{name}.yaml")) for name in profile_names()}


def at_release(profile: ImplProfile, version: str | None) -> ImplProfile:
    """``profile`` as the library release ``version`` executes it (None: the newest verified release): its release
    table's changes up to that release applied (`core.releases`)."""
    from core.releases import release_table

    table = release_table(profile.name)
    changes = table.overrides(version)
    unknown = sorted(set(changes) - {f.name for f in fields(ImplProfile)} - {"name", "variant"})
    if unknown:
        raise ProfileError(f"releases/{profile.name}.yaml sets unknown profile fields {', '.join(unknown)}")
    return replace(profile, **changes, variant=table.variant(version))


@cache
def profile_attn_default(impl: str) -> str:
    """The profile's own decoder attention (the first of its YAML's ``decoder_attn_impls``): what a workload uses
    unless told (eager for the PyTorch profiles, paged for vLLM)."""
    if impl not in profile_names():
        raise ProfileError(f"no profile {impl!r}: use one of {', '.join(profile_names())}")
    impls = OmegaConf.load(PROFILE_DIR / f"{impl}.yaml").get("decoder_attn_impls") or []
    if not impls:
        raise ProfileError(f"profiles/{impl}.yaml: decoder_attn_impls is empty; name at least one")
    return str(impls[0])


@cache
def profile_crop_max(impl: str) -> int | None:
    """The most crops the implementation's preprocessing makes (its YAML's ``crop_max``), None for the family's
    own rule: vLLM's DeepSeek-OCR processor caps the grid at 6 crops where the official code allows 9."""
    if impl not in profile_names():
        return None
    value = OmegaConf.load(PROFILE_DIR / f"{impl}.yaml").get("crop_max")
    return None if value is None else int(value)


@cache
def profile_lm_head_default(impl: str) -> str:
    """The profile's own lm_head scope (its YAML's ``lm_head_default``): what a workload uses unless told."""
    if impl not in profile_names():
        raise ProfileError(f"no profile {impl!r}: use one of {', '.join(profile_names())}")
    value = OmegaConf.load(PROFILE_DIR / f"{impl}.yaml").get("lm_head_default")
    if value not in LM_HEAD_SCOPES:
        raise ProfileError(f"profiles/{impl}.yaml: lm_head_default={value!r}; use one of {', '.join(LM_HEAD_SCOPES)}")
    return str(value)
