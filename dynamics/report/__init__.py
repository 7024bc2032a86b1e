"""The report side, by stage: style (sizes, fonts, palettes, saving), plots (the plotting functions,
``dynamics.plots``: axes-level and one figure-level),
data (the loaded runs), computed (every number of one report, computed once), tables (run-level tables),
display (their strings), findings (sentences), panels (the report's whole figures), render (Markdown and HTML writers) and
build (the report end to end)."""
from .build import build_report, report
from .computed import ReportNumbers, summary_table
from .data import ReportData, load_report_data
from .display import format_summary
from .findings import findings

__all__ = ["ReportData", "ReportNumbers", "load_report_data", "summary_table", "format_summary", "findings",
           "build_report", "report"]
