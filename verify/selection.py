"""Page selection shared by every page source: seeded sample, then limit."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")  # a PageSpec, or what a loader makes one from (so only the chosen pages are ever opened)


def select_pages(pages: list[T], limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[T]:
    """A seeded sample (order kept) of `sample` pages, then the first `limit` (by position only: the same choice
    whether made on page specs or on the files they come from)."""
    chosen = list(pages)
    if sample is not None and sample < len(chosen):
        keep = set(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [p for i, p in enumerate(chosen) if i in keep]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen
