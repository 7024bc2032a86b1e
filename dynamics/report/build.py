"""The imbalance report end to end: recorded runs -> numbers -> figures and sentences -> files.

:func:`report` reads run directories and writes ``report.html`` (one self-contained file, figures
base64-embedded, every run-derived name HTML-escaped), ``report.md`` with ``figures/*.png|pdf``
beside it, and ``summary.csv`` (the key table, unformatted). :func:`build_report` does the same from
runs already loaded (:class:`~dynamics.report.data.ReportData`). The numbers come from
:class:`~dynamics.report.computed.ReportNumbers` (each computed once), the sentences from
:func:`~dynamics.report.findings.findings`, the figures from :mod:`dynamics.report.panels`, the files from the
writers of :mod:`dynamics.report.render`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from . import panels, style
from .computed import ReportNumbers
from .data import ReportData, load_report_data
from .display import (format_comparisons, format_shares, format_summary, metric_display, runs_word,
                      utilization_display)
from .findings import findings
from .render import Document, FigureFile, to_html, to_markdown

__all__ = ["build_report", "report", "document", "save_figures"]


def save_figures(nums: ReportNumbers, folder: Path) -> list[FigureFile]:
    """Draw every figure of the report in the package style and save it (vector PDF and PNG) under ``folder``.
    The figures are bare Figures (never in pyplot's list, the user's backend untouched): nothing to close."""
    saved = []
    with style.publication_style():
        for name, caption, fig in panels.report_figures(nums):
            paths = style.save_figure(fig, folder / name, tight=False)  # laid out to fit: one size family
            saved.append(FigureFile(name, caption, paths[-1]))
    return saved


METHODS = ("Statistics: the run (seed) is the unit of every interval and test. Each run is summarised first "
           "(its mean gradient norms, shares, mean log ratio over matched layers, last logged metrics); intervals "
           "are 95% Student-t intervals over runs, on the log scale for ratios and losses and the logit scale for "
           "AUC and accuracy (so they stay in range); whether one view's layers have larger gradients is tested "
           "with the exact sign-flip test over runs, whose smallest p with n runs is 2/2^n; layer counts are "
           "description. Below 3 runs no interval, test or detectable difference is given, only the per-run "
           "values. Conditions are compared with the reference by the difference of means (paired by seed when "
           "both hold the same seeds, else Welch) on the outcome metrics logged at the end of the runs and the "
           "view statistics; every p-value of the report is in one Holm family ({m} tests), and beside every null "
           "is the smallest difference the design detects at 80% power at that test's Holm level. Flagged runs "
           "(never closed, recorder errors, a step count a tenth away from their group's median) are {flagged}.")


def document(nums: ReportNumbers, title: str, figures: list[FigureFile]) -> Document:
    """The report's content from its numbers: lead, findings, tables, figures and the run table."""
    sentences = findings(nums.summary, shares=nums.shares, metrics=nums.metrics, utilization=nums.utilization,
                         exclusions=nums.exclusions, unmatched=nums.unmatched, probe=nums.probe,
                         comparisons=nums.comparisons, outcomes=nums.outcomes, shared=nums.shared,
                         notes=[*nums.view_notes, *nums.uneven_phases.values(), *nums.comparison_notes])
    if len(nums.warnings):
        sentences.append(f"The runs' metadata holds {len(nums.warnings)} warning"
                         f"{'s' if len(nums.warnings) != 1 else ''} (see Warnings).")
    sections = [("Warnings", nums.warnings), ("Imbalance statistics", format_summary(nums.summary)),
                ("Shares of the loss reduction", format_shares(nums.shares))]
    if len(nums.comparisons):
        sections.append((f"Comparisons with the reference ({nums.reference})", format_comparisons(nums.comparisons)))
    if len(nums.metrics):
        sections.append(("Logged metrics (last value per run)", metric_display(nums.metrics)))
    if len(nums.utilization):
        sections.append(("Conditional utilization", utilization_display(nums.utilization)))
    pairs = "every pair" if len(nums.pairs) > 1 else "one pair"
    lead = [(f"{runs_word(len(nums.group_of))} grouped by ", False), (nums.by or "run", True),
            (f"; views compared: {', '.join(nums.views)} ({pairs})", False)]
    if len(nums.groups) > 1:
        lead.append((f"; reference {nums.by or 'run'}: {nums.reference}", False))
    flagged = ("kept (--include-flagged)" if nums.include_flagged else
               "left out of every number (listed in Warnings; --include-flagged keeps them)")
    lead.append((". " + METHODS.format(m=nums.family_size, flagged=flagged), False))
    return Document(title=title, lead=lead, findings=sentences, sections=sections, figures=figures,
                    runs=nums.runs)


#: what a report writes under its folder; a new report replaces these whole (no figure of an earlier one is left)
WRITES = ("report.html", "report.md", "summary.csv", "shares.csv", "comparisons.csv", "figures")


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` (on its file system) to write the report into; moved into ``out`` only when
    everything was written, else removed: a failed report leaves nothing behind, not even ``out``."""
    anchor = out.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=anchor))
    try:
        yield stage
        out.mkdir(parents=True, exist_ok=True)
        for name in WRITES:
            if not (stage / name).exists():
                continue
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
            os.replace(stage / name, old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_report(data: ReportData, out: str | os.PathLike, *, by: str | None = "condition",
                 views: Sequence[str] | None = None, shared: str | None = None, baseline: str | None = None,
                 title: str = "dynamics imbalance report", progress: bool = True,
                 metrics: Sequence[str] | None = None, include_flagged: bool = False) -> dict[str, Path]:
    """Compute every statistic and write report.html, report.md, figures/, summary.csv (the key table),
    shares.csv and comparisons.csv under ``out``. ``shared``: the shared group's name (default: the one the
    runs recorded, see :class:`ReportData`); ``baseline``: the reference condition (default: one named
    ``separate`` or ``baseline``; see :class:`ReportNumbers`); ``metrics``: the outcome metrics compared;
    ``include_flagged``: keep flagged runs in the statistics. Everything is written into a folder beside ``out``
    first and moved in when complete: a report that fails (an unknown ``baseline``, a full disk) leaves nothing
    behind; a report replaces the files of :data:`WRITES` of an earlier one whole and leaves other files in
    ``out`` alone."""
    out = Path(out)
    nums = ReportNumbers(data, by=by, views=views, shared=shared, baseline=baseline, metrics=metrics,
                         include_flagged=include_flagged)
    nums.check()  # before anything is written
    steps = tqdm(total=3, desc="report", disable=not progress, unit="stage")
    try:
        with _staged(out) as stage:
            steps.set_postfix_str("summary")
            nums.summary.to_csv(stage / "summary.csv", index=False)
            nums.shares.to_csv(stage / "shares.csv", index=False)
            nums.comparisons.to_csv(stage / "comparisons.csv", index=False)
            steps.update()
            steps.set_postfix_str("figures")
            figures = save_figures(nums, stage / "figures")
            steps.update()
            steps.set_postfix_str("writing")
            doc = document(nums, title, figures)
            (stage / "report.md").write_text(to_markdown(doc), encoding="utf-8")
            (stage / "report.html").write_text(to_html(doc), encoding="utf-8")
            steps.update()
    finally:
        steps.close()
    return {"html": out / "report.html", "md": out / "report.md", "csv": out / "summary.csv",
            "figures": out / "figures"}


def report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, by: str | None = "condition",
           views: Sequence[str] | None = None, progress: bool = True, **kwargs: Any) -> dict[str, Path]:
    """Read run directories and write the report under ``out`` (see :func:`build_report`)."""
    data = load_report_data(runs, progress=progress)
    return build_report(data, out, by=by, views=views, progress=progress, **kwargs)
