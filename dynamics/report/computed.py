"""Every number of one report, computed on first use and only once (:class:`ReportNumbers`).

On the runs and groups :class:`~dynamics.report.groups.ReportRuns` selects (the report's choices: grouping,
compared views, shared group, reference condition), it computes the cleaned rows, view dynamics, matched layers of every pair of views, run-level summaries, the key table, the
shares of every view, the comparisons of conditions with the reference, the conditional learning speed, the
exclusions and the metric, utilization, probe and run tables. Tables, sentences, figures and the writers read
from it; none of them recomputes an analysis.

Flagged runs (:func:`dynamics.report.notices.flagged_runs`: never closed, recorder errors, a step count a tenth
away from its group's median) are left out of every number unless ``include_flagged``; runs that recorded no
step and copies of another run (the same ``run_id``) never count. Every p-value of the report (the key table's
sign-flip tests and the comparisons between conditions) is in one Holm family.
"""
from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd

from .. import analysis
from ..analysis import sweep
from ..analysis.comparisons import holm_family
from . import notices, selection, tables
from .data import ReportData
from .groups import ReportRuns

__all__ = ["ReportNumbers", "summary_table"]


class ReportNumbers(ReportRuns):
    """Every number of one report, from the runs :class:`ReportRuns` selects (its parameters)."""

    # ----------------------------------------------------------------- analyses, each once
    @cached_property
    def cleaned(self) -> pd.DataFrame:
        """The sums every statistic uses: those of the usable rows (the rule of ``analysis.clean``, applied as
        each run was reduced), computed once."""
        return self.data.sums[self.data.sums["used"]]

    @cached_property
    def view_dynamics(self) -> pd.DataFrame:
        return analysis.view_dynamics_from_sums(self.cleaned)

    @cached_property
    def matched_layers(self) -> pd.DataFrame:
        """Per pair, phase (and ``all``), run and matched depth: each view's mean gradient norm at that depth
        (``analysis.sweep.sweep_layer_means``); ``attrs``: ``pairs`` and ``unmatched``."""
        pairs = analysis.view_pairs(self.data.sums, self.requested_views, self.shared)
        return sweep.sweep_layer_means(self.data.sweep, pairs)

    @cached_property
    def matched_cells(self) -> pd.DataFrame:
        """Per group, pair, depth and step: the mean log2 matched-layer ratio over the group's runs and their
        number ``n`` (the heatmap's input)."""
        s = self.data.sweep
        return sweep.ratio_cells(s.ratios, [self.group_of.get(r, r) for r in s.runs], s.pairs, self.pairs)

    @cached_property
    def pairs(self) -> list[tuple[str, str]]:
        """The pairs of views compared (every pair, in view order)."""
        return list(self.matched_layers.attrs["pairs"])

    @cached_property
    def unmatched(self) -> dict[str, list]:
        """Per pair ``"a/b"``: the depths in only one of the two views (left out of the matched layers)."""
        return self.matched_layers.attrs.get("unmatched", {})

    @cached_property
    def views(self) -> list[str]:
        """The views compared, in order."""
        return list(dict.fromkeys(v for pair in self.pairs for v in pair))

    @cached_property
    def run_summary(self) -> pd.DataFrame:
        return analysis.run_summary(self.data.sums, self.data.per_step, vd=self.view_dynamics)

    @cached_property
    def uneven_phases(self) -> dict[str, str]:
        """Group -> why its phases are not shown (:func:`selection.uneven_phases`: its runs cover different
        steps, so early, middle and late would mean different steps in different runs)."""
        return selection.uneven_phases(self.data.sums, self.group_of)

    def _whole_run_only(self, table: pd.DataFrame) -> pd.DataFrame:
        return selection.whole_run_only(table, self.uneven_phases)

    @cached_property
    def _summary_rows(self) -> pd.DataFrame:
        return self._whole_run_only(analysis.imbalance_summary(
            self.data.sums, self.data.per_step, by=self.by, views=self.views, shared=self.shared,
            order=self.groups, vd=self.view_dynamics, layers=self.matched_layers, rs=self.run_summary))

    @cached_property
    def _family(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The key table and the comparisons, every p-value of both Holm-adjusted in one family."""
        summary = self._summary_rows
        if len(self.groups) < 2 or self._reference_or_none is None:
            comparisons = pd.DataFrame(columns=analysis.comparisons.COLUMNS)
        else:
            values = tables.comparison_values(self.data.sums, self.run_metrics, self.outcomes, self.pair_runs,
                                              self.run_summary, self.views, self.shared, self.group_of)
            comparisons = analysis.compare_conditions(values, reference=self.reference, order=self.groups)
        comparisons, adjusted = holm_family(comparisons, summary["p"].to_numpy(float) if len(summary) else [])
        if len(summary):
            summary = summary.copy()
            summary.insert(list(summary.columns).index("p") + 1, "p_holm", adjusted)
        return summary, comparisons

    @cached_property
    def family_size(self) -> int:
        """How many tests the report's one Holm family holds."""
        s, c = self._family
        return int(np.isfinite(c["p"].to_numpy(float)).sum() + np.isfinite(s["p"].to_numpy(float)).sum())

    @cached_property
    def summary(self) -> pd.DataFrame:
        """The key table (``analysis.imbalance_summary``): per group, phase and pair of views, with ``p_holm``
        from the report's one Holm family."""
        return self._family[0]

    @cached_property
    def shares(self) -> pd.DataFrame:
        """Every view's share of the loss reduction per group and phase (``analysis.view_shares``)."""
        return self._whole_run_only(analysis.view_shares(self.run_summary, self.run_groups, shared=self.shared,
                                                         order=self.groups))

    @cached_property
    def pair_runs(self) -> pd.DataFrame:
        """Per run, phase and pair: the ratios every statistic across runs starts from."""
        return analysis.pair_runs(self.run_summary, layers=self.matched_layers).merge(self.run_groups, on="run")

    @cached_property
    def conditional_speed(self) -> pd.DataFrame:
        """Conditional learning speed of every pair, stacked (``view_a``, ``view_b`` columns)."""
        parts = [analysis.conditional_learning_speed(self.data.sums, self.data.per_step, views=pair,
                                                     shared=self.shared, vd=self.view_dynamics).assign(
                     view_a=pair[0], view_b=pair[1]) for pair in self.pairs]
        return pd.concat(parts, ignore_index=True)

    @cached_property
    def exclusions(self) -> pd.DataFrame:
        return analysis.exclusions(self.data.sums, self.data.per_step, cleaned=self.cleaned)

    @cached_property
    def run_metrics(self) -> pd.DataFrame:
        """Per run: the last logged value of every user scalar (empty when nothing was logged)."""
        return tables.run_metrics(self.data)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return tables.metric_table(self.run_metrics, self.group_of, order=self.groups)

    @cached_property
    def outcomes(self) -> list[str]:
        """The outcome metrics the report compares and draws: those named (``metrics``), else the scalars logged
        once, at the end of every run (test AUC first; :func:`tables.choose_outcomes`)."""
        names = [c for c in self.run_metrics.columns if c != "run"]
        return tables.choose_outcomes(names, self.data.per_step, self.metric_names)

    @cached_property
    def training_scalars(self) -> list[str]:
        """The logged scalars that are not outcomes: described in the metric table, never tested."""
        return [c for c in self.run_metrics.columns if c != "run" and c not in self.outcomes]

    @cached_property
    def comparison_notes(self) -> list[str]:
        """Sentences on what is not compared and why (an outcome some group's runs did not log; the training
        scalars; flagged runs kept)."""
        notes = []
        if len(self.groups) > 1:
            notes += tables.missing_outcomes(self.run_metrics, self.outcomes, self.group_of, self.groups,
                                             self._reference_or_none)
            if self.training_scalars:
                notes.append(f"The training scalars {', '.join(self.training_scalars)} (logged during training, "
                             "not once at the end) are described in the metrics table, not compared; name outcome "
                             "metrics with --metrics to compare them.")
        kept = self.flagged[~self.flagged["always"]] if self.include_flagged else self.flagged.iloc[:0]
        if len(kept):
            notes.append(f"Flagged runs are included in every statistic (--include-flagged): "
                         f"{', '.join(kept['run'])} (see Warnings).")
        return notes

    @cached_property
    def utilization(self) -> pd.DataFrame:
        return tables.utilization_table(self.data, self.group_of, order=self.groups)

    @cached_property
    def probe(self) -> pd.DataFrame:
        return tables.probe_table(self.data, self.group_of, order=self.groups)

    @cached_property
    def comparisons(self) -> pd.DataFrame:
        """Every group against the reference (``analysis.compare_conditions``), Holm-adjusted in the report's
        one family (with the key table's tests); empty with one group."""
        if len(self.groups) > 1:
            self.reference  # noqa: B018 (refused, with the list, when none is named)
        return self._family[1]

    @cached_property
    def view_notes(self) -> list[str]:
        """Sentences on views that not every run recorded (compared only where runs share them)."""
        return tables.view_set_notes(self.data.sums, self.shared, self.views)

    @cached_property
    def warnings(self) -> pd.DataFrame:
        """Each run's notes and errors, runs never closed, steps measured at the optimizer step only (every
        loaded run, counted or not), then the flagged runs: excluded, or kept with ``include_flagged``."""
        metas = self.all_metas or {run: {} for run in self.group_of}
        return pd.concat([notices.run_warnings(metas), notices.exclusion_warnings(self.flagged, self.include_flagged)],
                         ignore_index=True)

    @cached_property
    def runs(self) -> pd.DataFrame:
        """One row of metadata per run."""
        return tables.run_table(self.data, self.exclusions)

    def grouped(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` (with a ``run`` column) with each run's group as ``_group``."""
        return table.assign(_group=table["run"].astype(str).map(self.group_of))

    @cached_property
    def palette(self) -> dict[str, str]:
        """One colour per view, the same in every figure."""
        from .style import view_palette
        return view_palette(analysis.view_order(self.data.sums), shared=self.shared)

    @cached_property
    def group_palette(self) -> dict[str, str]:
        """One colour per group (condition), from a palette distinct from the views'."""
        from .style import condition_palette
        return condition_palette(self.groups)


def summary_table(data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                  shared: str | None = None) -> pd.DataFrame:
    """The key table (``analysis.imbalance_summary``) for the report's grouping. ``shared``: the shared
    group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    return ReportNumbers(data, by=by, views=views, shared=shared).summary
