"""Shared bits of the layer modules: the config error, the identical-layer grouping, the layer stack, the vision
attention kernel (SAM and CLIP run the same one) and the vision profile facts both read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Final, TypeVar

from analytic.costs import EW, Cost, sub
from core.profiles import ImplProfile

T = TypeVar("T")
F32 = 4  # bytes of the float32 the norms, softmaxes and the router compute in


class ConfigError(ValueError):
    """The analytic config is inconsistent; the message names the field and the fix."""


def layer_norm(c: Cost, path: str | None, rows: int, width: int, db: int, stats_db: int = 4) -> None:
    """nn.LayerNorm as one native_layer_norm: reads x and (weight, bias), writes y and a mean and rstd per row
    (``stats_db`` bytes each: `ImplProfile.norm_stats_bytes`).  Liveness: y is held."""
    n = rows * width
    traffic = (n * db, n * db + 2 * rows * stats_db)
    c.elementwise(path, "layernorm", n, EW["layernorm"], db, weight_elems=2 * width, traffic=traffic)
    c.hold(n * db)  # y stays live (the caller releases it); mean and rstd die as soon as the op returns
    c.spike(2 * rows * stats_db)


def group(items: tuple[T, ...]) -> list[tuple[T, int]]:
    """Distinct (hashable, frozen) items with their counts: identical layers are costed once and scaled."""
    counts: dict[T, int] = {}
    for it in items:
        counts[it] = counts.get(it, 0) + 1
    return list(counts.items())


def layer_stack(
    c: Cost, path: str | None, count: int, run: Callable[[Cost, str | None], None]
) -> list[tuple[Cost, int]]:
    """`count` identical layers for `add_stack`: with records, each costed on its own under ``path.layers.i``
    (``run(cost, layer_path)``); without, one costed once and scaled (none at all when `count` is 0)."""
    if c.want_records:
        stack = []
        for i in range(count):
            one = Cost(True)
            run(one, sub(path, f"layers.{i}"))
            stack.append((one, 1))
        return stack
    if not count:
        return []
    one = Cost()
    run(one, None)
    return [(one, count)]


def _sdpa_kernel(c: Cost, path: str | None, views: int, heads: int, seq: int, head_dim: int, db: int) -> None:
    """One F.scaled_dot_product_attention call."""
    c.sdpa(sub(path, "sdpa"), views, heads, seq, seq, head_dim, head_dim, db=db)


def _eager_kernel(c: Cost, path: str | None, views: int, heads: int, seq: int, head_dim: int, db: int) -> None:
    """matmul(q, k^T), softmax, matmul(probs, v)."""
    c.bmm(sub(path, "qk"), "matmul_qk", views * heads, seq, head_dim, seq, db=db)
    c.elementwise(sub(path, "softmax"), "softmax", views * heads * seq * seq, EW["softmax"] + EW["mul"], db)
    c.bmm(sub(path, "av"), "matmul_av", views * heads, seq, seq, head_dim, db=db)


@dataclass(frozen=True)
class _VisionKernel:
    """One `ImplProfile.vision_attention` mode: its kernel, and whether its output always has the (B, H, S, D) layout
    (so permuting it back to rows copies whatever q's layout)."""

    run: Callable[[Cost, str | None, int, int, int, int, int], None]
    output_bhsd: bool


VISION_KERNELS = {"sdpa": _VisionKernel(_sdpa_kernel, False), "eager": _VisionKernel(_eager_kernel, True)}


def vision_attention(
    c: Cost, path: str | None, views: int, heads: int, seq: int, head_dim: int, kernel: str, db: int
) -> None:
    """Unmasked self-attention over `seq` tokens: one SDPA call, or the eager matmul-softmax-matmul."""
    VISION_KERNELS[kernel].run(c, path, views, heads, seq, head_dim, db)


# ImplProfile.vision_sdpa_output -> whether SDPA's output is (B, H, S, D), given whether q was contiguous
_SDPA_OUTPUT_BHSD: dict[str, Callable[[bool], bool]] = {
    "contiguous": lambda q_contiguous: True,  # the meta device's math kernel, whatever q was
    "like_query": lambda q_contiguous: q_contiguous,  # q's layout: (B, S, H, D)-strided when q was a strided view
}


def sdpa_output_copies(profile: ImplProfile, q_contiguous: bool) -> bool:
    """Whether making a vision SDPA output (B, S, H, D)-contiguous copies it (`ImplProfile.vision_sdpa_output`)."""
    return _SDPA_OUTPUT_BHSD[profile.vision_sdpa_output](q_contiguous)


def output_permute_copies(profile: ImplProfile, q_contiguous: bool) -> bool:
    """Whether the vision attention output's permute + reshape back to rows copies: always after the eager
    matmuls; after SDPA as ``vision_sdpa_output`` says."""
    return sdpa_output_copies(profile, q_contiguous) or VISION_KERNELS[profile.vision_attention].output_bhsd


# ImplProfile.vision_resize_casts -> whether a position resize runs on a float32 copy, given the dtype's bytes
_RESIZE_CASTS: dict[str, Callable[[int], bool]] = {
    "always": lambda db: True,
    "when_not_float32": lambda db: db != 4,  # .to(torch.float32) / .to(dtype) are no copies in float32
}


def resize_casts(profile: ImplProfile, db: int) -> bool:
    """Whether SAM's and CLIP's position resizes cast to float32 and back (`ImplProfile.vision_resize_casts`)."""
    return _RESIZE_CASTS[profile.vision_resize_casts](db)


class _Default(Enum):
    """The marker of an omitted record path (None already means "no records")."""

    STAGE = "stage"


STAGE_PATH: Final = _Default.STAGE


@dataclass(frozen=True)
class VisionCall:
    """One vision-encoder call on `batch` SAM maps of grid x grid.  ``path``: where its records go (None: none);
    ``previous_tokens``: SAM tokens of the encoder call before this one in the same image (state an encoder keeps
    from one call to the next dies in this one)."""

    batch: int
    grid: int
    profile: ImplProfile
    db: int
    path: str | None
    previous_tokens: int = 0


class VisionEncoder:
    """The encoder after SAM (DeepSeek-OCR: CLIP; DeepSeek-OCR 2: the Qwen2 query encoder): one call signature,
    its body the family's `_forward`."""

    stage: ClassVar[str]  # the record path of a call that names none

    def evaluate(
        self,
        c: Cost,
        batch: int,
        grid: int,
        profile: ImplProfile,
        db: int,
        path: str | _Default | None = STAGE_PATH,
        previous_tokens: int = 0,
    ) -> int:
        """Adds one call on `batch` SAM maps of grid x grid; returns the tokens per view the projector's rows come
        from (`projector_rows`).  ``path``: default the encoder's stage."""
        where = self.stage if isinstance(path, _Default) else path
        return self._forward(c, VisionCall(batch, grid, profile, db, where, previous_tokens))

    def _forward(self, c: Cost, v: VisionCall) -> int:
        raise NotImplementedError
