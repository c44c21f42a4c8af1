"""Moved to `reports.model` (the run's result is what reports render); kept until every caller has moved."""

from reports.model import ComparisonRow, PageResult, PageSpec, RunResult  # noqa: F401
