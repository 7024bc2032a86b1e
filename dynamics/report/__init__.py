"""The report side: figure style and plotting functions (figures), and the report built from loaded runs
(build: numbers, findings, Markdown and HTML)."""
from .build import ReportData, build_report, findings, format_summary, load_report_data, report, summary_table

__all__ = ["ReportData", "load_report_data", "summary_table", "format_summary", "findings", "build_report",
           "report"]
