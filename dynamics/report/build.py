"""The imbalance report end to end: recorded runs -> numbers -> figures and sentences -> files.

:func:`report` reads run directories and writes ``report.html`` (one self-contained file, figures
base64-embedded, every run-derived name HTML-escaped), ``report.md`` with ``figures/*.png|pdf``
beside it, and ``summary.csv`` (the key table, unformatted). :func:`build_report` does the same from
tables already in memory. The numbers come from :class:`~dynamics.report.data.ReportNumbers` (each computed
once), the sentences from :func:`~dynamics.report.findings.findings`, the figures from
:mod:`dynamics.report.panels`, the files from the writers of :mod:`dynamics.report.render`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # the report never opens windows
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from . import panels, style  # noqa: E402
from .data import ReportData, ReportNumbers, load_report_data  # noqa: E402
from .findings import findings  # noqa: E402
from .render import Document, FigureFile, to_html, to_markdown  # noqa: E402
from .tables import format_summary, metric_display, runs_word, utilization_display  # noqa: E402

__all__ = ["build_report", "report", "document", "save_figures"]


def save_figures(nums: ReportNumbers, folder: Path) -> list[FigureFile]:
    """Draw every figure of the report in the package style and save it (PDF and PNG) under ``folder``."""
    saved = []
    with style.publication_style():
        for name, caption, fig in panels.report_figures(nums):
            paths = style.save_figure(fig, folder / name)
            plt.close(fig)
            saved.append(FigureFile(name, caption, paths[-1]))
    return saved


def document(nums: ReportNumbers, title: str, figures: list[FigureFile]) -> Document:
    """The report's content from its numbers: lead, findings, tables, figures and the run table."""
    a, b = nums.views
    sentences = findings(nums.summary, metrics=nums.metrics, utilization=nums.utilization,
                         exclusions=nums.exclusions, unmatched=nums.matched.attrs.get("unmatched", []),
                         probe=nums.probe)
    sections = [("Imbalance statistics", format_summary(nums.summary))]
    if len(nums.metrics):
        sections.append(("Logged metrics (last value per run)", metric_display(nums.metrics)))
    if len(nums.utilization):
        sections.append(("Conditional utilization", utilization_display(nums.utilization)))
    lead = [(f"{runs_word(len(nums.group_of))} grouped by ", False), (nums.by or "run", True),
            (f"; views compared: {a} vs {b}.", False)]
    return Document(title=title, lead=lead, findings=sentences, sections=sections, figures=figures,
                    runs=nums.runs)


def build_report(data: ReportData, out: str | os.PathLike, *, by: str | None = "condition",
                 views: Sequence[str] | None = None, shared: str | None = None,
                 title: str = "dynamics imbalance report", progress: bool = True, n_boot: int = 2000) -> dict[str, Path]:
    """Compute every statistic and write report.html, report.md, figures/ and summary.csv under ``out``.
    ``shared``: the shared group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc="report", disable=not progress, unit="stage")
    nums = ReportNumbers(data, by=by, views=views, shared=shared, n_boot=n_boot)
    steps.set_postfix_str("summary")
    nums.summary.to_csv(out / "summary.csv", index=False)
    steps.update()
    steps.set_postfix_str("figures")
    figures = save_figures(nums, out / "figures")
    steps.update()
    steps.set_postfix_str("writing")
    doc = document(nums, title, figures)
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    (out / "report.html").write_text(to_html(doc), encoding="utf-8")
    steps.update()
    steps.close()
    return {"html": out / "report.html", "md": out / "report.md", "csv": out / "summary.csv",
            "figures": out / "figures"}


def report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, by: str | None = "condition",
           views: Sequence[str] | None = None, progress: bool = True, **kwargs: Any) -> dict[str, Path]:
    """Read run directories and write the report under ``out`` (see :func:`build_report`)."""
    data = load_report_data(runs, progress=progress)
    return build_report(data, out, by=by, views=views, progress=progress, **kwargs)
