"""Page selection shared by every page source: seeded sample, then limit."""

from __future__ import annotations

import random

from reports.model import PageSpec


def select_pages(
    pages: list[PageSpec], limit: int | None = None, sample: int | None = None, seed: int = 0
) -> list[PageSpec]:
    """A seeded sample (order kept) of `sample` pages, then the first `limit`."""
    chosen = list(pages)
    if sample is not None and sample < len(chosen):
        keep = set(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [p for i, p in enumerate(chosen) if i in keep]
    if limit is not None:
        chosen = chosen[:limit]
    return chosen
