"""Shared bits of the layer modules: the config error, the identical-layer grouping and the
vision attention kernel (SAM and CLIP run the same one)."""

from __future__ import annotations

from typing import TypeVar

from analytic.costs import EW, Cost, sub

T = TypeVar("T")


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


def vision_attention(
    c: Cost, path: str | None, views: int, heads: int, seq: int, head_dim: int, kernel: str, db: int
) -> None:
    """Unmasked self-attention over `seq` tokens: one SDPA call, or the eager matmul-softmax-matmul."""
    if kernel == "sdpa":
        c.sdpa(sub(path, "sdpa"), views, heads, seq, seq, head_dim, head_dim, db=db)
        return
    c.bmm(sub(path, "qk"), "matmul_qk", views * heads, seq, head_dim, seq, db=db)
    c.elementwise(sub(path, "softmax"), "softmax", views * heads * seq * seq, EW["softmax"] + EW["mul"], db)
    c.bmm(sub(path, "av"), "matmul_av", views * heads, seq, seq, head_dim, db=db)
