"""The runs and groups of one report (:class:`ReportRuns`): which runs count (flagged runs out unless kept), the
group of each run, the groups in the report's one order and the reference group, chosen by name. Every number
computed from them is :class:`dynamics.report.computed.ReportNumbers`, which builds on this class.
"""
from __future__ import annotations

from functools import cached_property
from typing import Sequence

import pandas as pd

from .. import analysis
from . import selection
from .data import ReportData, add_group_column

__all__ = ["ReportRuns"]


class ReportRuns:
    """The report's choices and the runs they select.

    ``by``: the metadata field that groups runs (None: one group per run); ``views``: the views compared,
    every pair of them (default: every view besides the shared group that all runs recorded); ``shared``: the
    shared group's name (default: the one the runs recorded, see :class:`ReportData`); ``baseline``: the
    reference condition of the comparisons (default: a group named as in :data:`selection.REFERENCE_NAMES`; with
    several groups and none of them, the comparisons are refused with the list of groups); ``metrics``: the
    outcome metrics compared (default: the scalars logged once, at the end of every run; see
    :func:`dynamics.report.tables.choose_outcomes`); ``include_flagged``: keep flagged runs in the statistics.
    """

    def __init__(self, data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                 shared: str | None = None, baseline: str | None = None, metrics: Sequence[str] | None = None,
                 include_flagged: bool = False) -> None:
        full = add_group_column(data, by) if by is not None else data
        self.by = by
        self.requested_views = views
        self.shared = shared if shared is not None else data.shared if data.shared is not None else analysis.SHARED
        self.baseline = baseline
        self.metric_names = list(metrics) if metrics is not None else None
        self.include_flagged = include_flagged
        self.all_metas = dict(full.metas)
        self.flagged = selection.flag_runs(full, by)
        self.data = selection.counted(full, self.flagged, include_flagged)

    # ----------------------------------------------------------------- runs and groups
    @cached_property
    def run_groups(self) -> pd.DataFrame:
        """One row per run (in the order given) with its group."""
        return analysis.run_groups(self.data.sums, self.by)

    @cached_property
    def group_of(self) -> dict[str, str]:
        """Run label -> its group (the value of ``by``, or the run itself)."""
        return dict(zip(self.run_groups["run"], self.run_groups["group"]))

    @cached_property
    def groups(self) -> list[str]:
        """The groups in the one order every table and figure uses: the reference first (when there is one),
        then as given."""
        given = list(dict.fromkeys(self.run_groups["group"]))
        ref = self._reference_or_none
        return given if ref is None else [ref] + [g for g in given if g != ref]

    @cached_property
    def _reference_or_none(self) -> str | None:
        """The reference group (:func:`selection.named_reference`); None when none is named."""
        return selection.named_reference(list(dict.fromkeys(self.run_groups["group"])), self.baseline, self.by)

    @cached_property
    def reference(self) -> str:
        """The reference group of the comparisons (:attr:`_reference_or_none`); refused, with the list of
        groups, when none is named."""
        if self._reference_or_none is None:
            raise ValueError(f"which {self.by or 'run'} is the reference? none is called "
                             f"{' or '.join(selection.REFERENCE_NAMES)}: pass --baseline with one of "
                             f"{list(dict.fromkeys(self.run_groups['group']))}")
        return self._reference_or_none

    def check(self) -> None:
        """Raise now what a report would fail on later (no reference among several groups), before any file is
        written."""
        if len(self.groups) > 1:
            self.reference  # noqa: B018 (raises when none can be chosen)

