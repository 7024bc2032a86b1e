"""The report side, by stage: style (sizes, fonts, palettes, saving), figures (the plotting functions),
data (the loaded runs and every number of one report, computed once), tables (run-level tables and their
display strings), findings (sentences), panels (the report's figures), render (Markdown and HTML writers) and
build (the report end to end)."""
from .build import build_report, report
from .data import ReportData, ReportNumbers, load_report_data, summary_table
from .findings import findings
from .tables import format_summary

__all__ = ["ReportData", "ReportNumbers", "load_report_data", "summary_table", "format_summary", "findings",
           "build_report", "report"]
