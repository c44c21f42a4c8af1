"""Shared bits of the layer modules: the config error and the identical-layer grouping."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The analytic config is inconsistent; the message names the field and the fix."""


def group(items: tuple[T, ...]) -> list[tuple[T, int]]:
    """Distinct (hashable, frozen) items with their counts: identical layers are costed once and scaled."""
    counts: dict[T, int] = {}
    for it in items:
        counts[it] = counts.get(it, 0) + 1
    return list(counts.items())
