"""Report writers: markdown, CSV, JSON, HTML (written atomically) and the console summary."""

from __future__ import annotations

from typing import Any

__all__ = ["REPORT_FILES", "ReportExistsError", "write_reports"]


def __getattr__(name: str) -> Any:
    """Lazy: importing reports.model (every verify module does) must not pull pandas into CLI start-up."""
    if name in __all__:
        from reports import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
