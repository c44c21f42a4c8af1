"""The workload: everything DeepSeek-OCR's FLOPs depend on, built once per page.

Both sides (analytic and vendor) receive the same `VisionWorkload`; the vendor
side asserts that what the model actually received equals it.  The crop policy
mirrors the official `dynamic_preprocess` / `infer()` code (see
docs/deepseek-ocr-facts.md, "Views and the crop grid").

Each model family has its own rules (`FAMILY_RULES`): modes, crop tile and grid bounds, which
view sizes can run, and the image-token layout.  DeepSeek-OCR 2 (docs/deepseek-ocr2-facts.md):
crops of 768 (2..6 of them, same tie-break with 768 as the tile), only 768/1024 views (learnable
queries exist for 144 and 256 patches only), no newline tokens: nq*nq per view + 1 separator.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.families import CROP_MAX_NUM, CROP_MIN_NUM, CROP_SIZE, DEFAULT_FAMILY, FAMILY_TABLE, FamilyRules, ModePreset
from core.profiles import profile_attn_default, profile_crop_max, profile_lm_head_default, profile_names
from core.schema import ATTN_IMPLS, LM_HEAD_SCOPES

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4
# Pages above this many pixels are refused (decompression-bomb guard).
MAX_PAGE_PIXELS = 200_000_000
_RELEASE = re.compile(r"\d{1,4}(\.\d{1,6}){0,3}([.+-][0-9A-Za-z.+-]{1,40})?")  # 5.24.0, 2.13.0+cpu, 5.26.0.dev0

DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class WorkloadError(ValueError):
    """Bad workload input; the message names the problem and the fix."""


FAMILY_RULES: dict[str, FamilyRules] = {f.name: f.rules for f in FAMILY_TABLE}


def family_rules(family: str = DEFAULT_FAMILY) -> FamilyRules:
    try:
        return FAMILY_RULES[family]
    except KeyError:
        raise WorkloadError(f"unknown model {family!r}: use one of {', '.join(FAMILY_RULES)} (--model)") from None


def resolve_mode(
    mode: str | None,
    base_size: int | None = None,
    image_size: int | None = None,
    crop_mode: bool | None = None,
    family: str = DEFAULT_FAMILY,
) -> tuple[str, ModePreset]:
    """A preset, optionally overridden field by field; `custom` when no mode is named."""
    modes = family_rules(family).modes
    if mode is not None and mode not in modes:
        which = "" if family == DEFAULT_FAMILY else f" for --model {family}"
        raise WorkloadError(f"unknown mode {mode!r}{which}: use one of {', '.join(modes)}")
    if mode is None and (base_size is None or image_size is None or crop_mode is None):
        raise WorkloadError("no mode given: pass --mode, or all of --base-size, --image-size and --crop-mode")
    preset = modes[mode] if mode else ModePreset(0, 0, False)
    resolved = ModePreset(
        base_size if base_size is not None else preset.base_size,
        image_size if image_size is not None else preset.image_size,
        crop_mode if crop_mode is not None else preset.crop_mode,
    )
    name = mode if mode and resolved == modes[mode] else "custom"
    _validate_mode(resolved, family)
    return name, resolved


def _validate_mode(p: ModePreset, family: str = DEFAULT_FAMILY) -> None:
    rules = family_rules(family)
    for label, size in (("base_size", p.base_size), ("image_size", p.image_size)):
        if rules.view_sizes is not None:
            if size not in rules.view_sizes:
                sizes = " or ".join(str(v) for v in rules.view_sizes)
                raise WorkloadError(
                    f"{label}={size} cannot run on {family}: its encoder has learnable queries only for "
                    f"{sizes} px views; use {label}={sizes}"
                )
        elif size <= 0 or size % (PATCH_SIZE * DOWNSAMPLE_RATIO) != 0:
            raise WorkloadError(
                f"{label}={size} must be a positive multiple of {PATCH_SIZE * DOWNSAMPLE_RATIO} "
                "(patch 16 x downsample 4); pick e.g. 512, 640, 1024 or 1280"
            )
    if p.crop_mode and p.image_size != rules.crop_size:
        raise WorkloadError(
            f"crop_mode with image_size={p.image_size} is inconsistent: the vendor always cuts "
            f"{rules.crop_size}x{rules.crop_size} crops but would lay out tokens for {p.image_size}; "
            f"use image_size={rules.crop_size}"
        )


def compute_num_queries(size: int, patch_size: int = PATCH_SIZE, downsample_ratio: int = DOWNSAMPLE_RATIO) -> int:
    """Rows (= columns) of projector outputs for one square view: ceil((size // 16) / 4)."""
    return math.ceil((size // patch_size) / downsample_ratio)


def _crop_candidates(min_num: int = CROP_MIN_NUM, max_num: int = CROP_MAX_NUM) -> list[tuple[int, int]]:
    # Same set and order as the vendor: a set comprehension, then a stable sort by i*j.
    # Python set order of small int tuples is deterministic, but the vendor sorts only by
    # product, so ties keep set order; we reproduce that exactly.
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(
    aspect_ratio: float,
    width: int,
    height: int,
    image_size: int = CROP_SIZE,
    min_num: int = CROP_MIN_NUM,
    max_num: int = CROP_MAX_NUM,
) -> tuple[int, int]:
    """The vendor's tie-break: on an exact ratio tie the later candidate wins only
    if the page area exceeds half the candidate's tiled area."""
    best_ratio_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in _crop_candidates(min_num, max_num):
        target = ratio[0] / ratio[1]
        diff = abs(aspect_ratio - target)
        if diff < best_ratio_diff:
            best_ratio_diff = diff
            best = ratio
        elif diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


@dataclass(frozen=True)
class ViewLayout:
    """Which views the vendor builds for a page and at what size."""

    global_size: int  # side of the single global view (pixels)
    crop_size: int  # side of one crop (pixels); 0 without crops
    w_crop: int  # crop columns (images_spatial_crop[0])
    h_crop: int  # crop rows (images_spatial_crop[1])

    @property
    def n_crops(self) -> int:
        return self.w_crop * self.h_crop if self.has_crops else 0

    @property
    def has_crops(self) -> bool:
        return self.w_crop > 1 or self.h_crop > 1


def compute_view_layout(
    width: int,
    height: int,
    base_size: int,
    image_size: int,
    crop_mode: bool,
    family: str = DEFAULT_FAMILY,
    crop_max: int | None = None,
) -> ViewLayout:
    """The official infer() view policy (crop grid, global size); ``crop_max`` caps the grid where an implementation
    makes fewer crops than the family's rule (`core.profiles.profile_crop_max`)."""
    _validate_page(width, height)
    rules = family_rules(family)
    if not crop_mode:
        # One view of image_size (resized if <= the crop size, padded otherwise): no crops.
        return ViewLayout(global_size=image_size, crop_size=0, w_crop=1, h_crop=1)
    tile = rules.crop_size
    if width <= tile and height <= tile:
        return ViewLayout(global_size=base_size, crop_size=0, w_crop=1, h_crop=1)
    most = rules.crop_max if crop_max is None else crop_max
    i, j = find_closest_aspect_ratio(width / height, width, height, tile, rules.crop_min, most)
    return ViewLayout(global_size=base_size, crop_size=tile, w_crop=i, h_crop=j)


@dataclass(frozen=True)
class ProjectorTokens:
    """Image-token positions in the prompt (projector rows + newline/separator rows)."""

    global_queries: int  # nq of the global view
    crop_queries: int  # nq of one crop (0 without crops)
    global_tokens: int  # (nq+1)*nq + 1 (the +1 is the view separator); OCR-2 (no newlines): nq*nq + 1
    crops_tokens: int  # (nq*i + 1) * (nq*j); OCR-2: (nq*i) * (nq*j)
    global_rows: int  # projector output rows of the global view: nq*nq
    crops_rows: int  # projector output rows of all crops: i*j*nq*nq

    @property
    def total(self) -> int:
        return self.global_tokens + self.crops_tokens


def compute_projector_tokens(
    layout: ViewLayout, image_size: int | None = None, family: str = DEFAULT_FAMILY
) -> ProjectorTokens:
    nl = 1 if family_rules(family).newlines else 0
    nq_g = compute_num_queries(layout.global_size)
    global_tokens = (nq_g + nl) * nq_g + 1
    if not layout.has_crops:
        return ProjectorTokens(nq_g, 0, global_tokens, 0, nq_g * nq_g, 0)
    nq_c = compute_num_queries(image_size if image_size is not None else layout.crop_size)
    crops_tokens = (nq_c * layout.w_crop + nl) * (nq_c * layout.h_crop)
    return ProjectorTokens(nq_g, nq_c, global_tokens, crops_tokens, nq_g * nq_g, layout.n_crops * nq_c * nq_c)


def max_image_tokens(preset: ModePreset, family: str = DEFAULT_FAMILY) -> int:
    """The most image tokens any page can get in this mode: over every crop grid the policy can pick."""
    rules = family_rules(family)
    if not preset.crop_mode:
        return compute_projector_tokens(ViewLayout(preset.image_size, 0, 1, 1), family=family).total
    small_page = compute_projector_tokens(ViewLayout(preset.base_size, 0, 1, 1), family=family).total
    candidates = _crop_candidates(rules.crop_min, rules.crop_max)
    grids = (ViewLayout(preset.base_size, rules.crop_size, i, j) for i, j in candidates)
    return max(small_page, *(compute_projector_tokens(g, preset.image_size, family).total for g in grids))


def check_positions(max_positions: int, image_tokens: int, prompt_tokens: int, decode_tokens: int) -> None:
    """Refuse a workload whose prefill (BOS + image + prompt tokens) plus decode steps exceed the positions."""
    needed = 1 + image_tokens + prompt_tokens + decode_tokens
    if needed > max_positions:
        raise WorkloadError(
            f"1 + {image_tokens} image tokens + {prompt_tokens} prompt tokens + {decode_tokens} decode steps = "
            f"{needed} positions, past the decoder's {max_positions} (decoder.max_position_embeddings): "
            "lower --prompt-tokens or --decode-tokens"
        )


def _check_run_options(
    prompt_tokens: int, decode_tokens: int, batch: int, dtype: str, impl: str, impl_version: str | None, attn_impl: str
) -> None:
    """Refuse a workload option outside what is modelled, naming the values that are."""
    if prompt_tokens < 0 or decode_tokens < 0:
        raise WorkloadError("prompt_tokens and decode_tokens must be >= 0")
    if batch != 1:
        raise WorkloadError(f"batch={batch}: only batch 1 is modelled (the vendor infer() runs one page)")
    if dtype not in DTYPES:
        raise WorkloadError(f"dtype {dtype!r} unknown: use one of {', '.join(DTYPES)}")
    if impl not in profile_names():
        raise WorkloadError(f"impl {impl!r} unknown: use one of {', '.join(profile_names())}")
    if impl_version is not None and not _RELEASE.fullmatch(str(impl_version)):
        raise WorkloadError(f"impl_version {impl_version!r} is not a release number: write it like 5.24.0")
    if attn_impl not in ATTN_IMPLS:
        raise WorkloadError(f"attn_impl {attn_impl!r} unknown: use one of {', '.join(ATTN_IMPLS)}")


def _validate_page(width: int, height: int) -> None:
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise WorkloadError(f"page size {width}x{height} is not positive: give width and height in pixels, > 0")
    if width * height > MAX_PAGE_PIXELS:
        raise WorkloadError(f"page size {width}x{height} exceeds {MAX_PAGE_PIXELS:,} pixels: downscale the image first")


@dataclass(frozen=True)
class VisionWorkload:
    """Everything FLOPs depend on for one page; handed unchanged to both sides."""

    mode: str
    base_size: int
    image_size: int
    crop_mode: bool
    width: int
    height: int
    global_view_size: int
    crop_size: int
    w_crop: int
    h_crop: int
    n_crops: int
    global_queries: int
    crop_queries: int
    global_image_tokens: int
    crops_image_tokens: int
    n_image_tokens: int
    prompt_tokens: int
    decode_tokens: int
    batch: int = 1
    dtype: str = "float32"
    lm_head_scope: str = "all"  # one of schema.LM_HEAD_SCOPES
    impl: str = "official"  # an implementation profile (profiles.profile_names())
    # the release of the profile's library the vendor runs (transformers for hf and official): picks the profile's
    # release variant (core.releases); None = the newest verified release
    impl_version: str | None = None
    attn_impl: str = "eager"  # one of schema.ATTN_IMPLS
    model: str = DEFAULT_FAMILY  # the model family (schema.FAMILIES): picks the rules above and the config
    # Experts whose weights the prefill reads, per MoE layer in order; None = balanced routing (every layer
    # hits min(E, rows x top-k)).  Routing decides bytes, never FLOPs: a comparison takes it from the vendor
    # trace, as it takes the crop grid.  Decode steps need none: one token hits exactly top-k experts.
    prefill_experts_hit: tuple[int, ...] | None = None

    @property
    def prefill_len(self) -> int:
        """BOS + image tokens + prompt text tokens."""
        return 1 + self.n_image_tokens + self.prompt_tokens

    @property
    def has_crops(self) -> bool:
        return self.n_crops > 0

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @classmethod
    def from_page(
        cls,
        width: int,
        height: int,
        mode: str | None = "gundam",
        *,
        base_size: int | None = None,
        image_size: int | None = None,
        crop_mode: bool | None = None,
        prompt_tokens: int = 12,
        decode_tokens: int = 0,
        batch: int = 1,
        dtype: str = "float32",
        lm_head_scope: str | None = None,
        impl: str = "official",
        impl_version: str | None = None,
        attn_impl: str | None = None,
        model: str = DEFAULT_FAMILY,
    ) -> VisionWorkload:
        name, preset = resolve_mode(mode, base_size, image_size, crop_mode, model)
        if attn_impl is None:  # the implementation's own decoder attention (its profile's first)
            attn_impl = profile_attn_default(impl) if impl in profile_names() else "eager"
        _check_run_options(prompt_tokens, decode_tokens, batch, dtype, impl, impl_version, attn_impl)
        if lm_head_scope is None:  # the implementation's own behaviour, as its profile YAML states it
            lm_head_scope = profile_lm_head_default(impl)
        if lm_head_scope not in LM_HEAD_SCOPES:
            raise WorkloadError(f"lm_head scope {lm_head_scope!r} unknown: use one of {', '.join(LM_HEAD_SCOPES)}")
        layout = compute_view_layout(
            width, height, preset.base_size, preset.image_size, preset.crop_mode, model, profile_crop_max(impl)
        )
        tokens = compute_projector_tokens(layout, preset.image_size if layout.has_crops else None, model)
        return cls(
            mode=name,
            base_size=preset.base_size,
            image_size=preset.image_size,
            crop_mode=preset.crop_mode,
            width=width,
            height=height,
            global_view_size=layout.global_size,
            crop_size=layout.crop_size,
            w_crop=layout.w_crop,
            h_crop=layout.h_crop,
            n_crops=layout.n_crops,
            global_queries=tokens.global_queries,
            crop_queries=tokens.crop_queries,
            global_image_tokens=tokens.global_tokens,
            crops_image_tokens=tokens.crops_tokens,
            n_image_tokens=tokens.total,
            prompt_tokens=prompt_tokens,
            decode_tokens=decode_tokens,
            batch=batch,
            dtype=dtype,
            lm_head_scope=lm_head_scope,
            impl=impl,
            impl_version=impl_version,
            attn_impl=attn_impl,
            model=model,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefill_len"] = self.prefill_len
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionWorkload:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("prefill_experts_hit") is not None:  # JSON gives a list; the workload is hashable
            kw["prefill_experts_hit"] = tuple(kw["prefill_experts_hit"])
        return cls(**kw)

    def signature(self) -> dict[str, Any]:
        """The fields that change a count (page size only through the grid)."""
        d = self.to_dict()
        for k in ("width", "height", "mode", "prefill_experts_hit"):  # routing is what the run did, not asked
            d.pop(k, None)
        return d
