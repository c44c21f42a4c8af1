"""Report writers: markdown, CSV, JSON, HTML (written atomically) and the console summary."""

from reports.writer import REPORT_FILES, ReportExistsError, write_reports

__all__ = ["REPORT_FILES", "ReportExistsError", "write_reports"]
