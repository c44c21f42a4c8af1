"""The CSV report: the comparison frame as it is, one row per page x stage x part x metric."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.frame import comparison_frame
from reports.model import RunResult


def write_csv(run: RunResult, path: Path, df: pd.DataFrame | None = None) -> int:
    """Write the rows; returns how many were written (page errors live in the markdown and JSON)."""
    df = comparison_frame(run) if df is None else df
    df.to_csv(path, index=False, encoding="utf-8")
    return len(df)
