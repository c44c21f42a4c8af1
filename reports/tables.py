"""The CSV report: one row per page x stage x part x metric, with the page's geometry alongside."""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

from verify.model import ComparisonRow, RunResult

ROW_COLUMNS = tuple(f.name for f in fields(ComparisonRow))
PAGE_COLUMNS = (
    "source",
    "data_source",
    "synthetic",
    "width",
    "height",
    "w_crop",
    "h_crop",
    "n_crops",
    "n_image_tokens",
    "prefill_len",
    "cache_hit",
)


def write_csv(run: RunResult, path: Path) -> int:
    """Write the rows; returns how many were written (page errors live in the markdown and JSON)."""
    count = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*ROW_COLUMNS, *PAGE_COLUMNS])
        writer.writeheader()
        for page in run.pages:
            w = page.workload or {}
            info = {
                "source": page.page.source,
                "data_source": page.page.attributes.get("data_source", ""),
                "synthetic": page.page.synthetic,
                "width": page.page.width,
                "height": page.page.height,
                "cache_hit": page.cache_hit,
                **{k: w.get(k, "") for k in ("w_crop", "h_crop", "n_crops", "n_image_tokens", "prefill_len")},
            }
            for row in page.rows:
                writer.writerow({**{k: "" if v is None else v for k, v in row.to_dict().items()}, **info})
                count += 1
    return count
