"""Every number of one report, computed on first use and only once (:class:`ReportNumbers`).

It holds the report's choices (grouping, compared views, shared group, reference condition) and computes the
cleaned rows, view dynamics, matched layers of every pair of views, run-level summaries, the key table, the
shares of every view, the comparisons of conditions with the reference, the conditional learning speed, the
exclusions and the metric, utilization, probe and run tables. Tables, sentences, figures and the writers read
from it; none of them recomputes an analysis.
"""
from __future__ import annotations

from functools import cached_property
from typing import Sequence

import pandas as pd

from .. import analysis
from ..analysis import sweep
from . import tables
from .data import ReportData, add_group_column

__all__ = ["ReportNumbers", "summary_table"]


class ReportNumbers:
    """Every number of one report.

    ``by``: the metadata field that groups runs (None: one group per run); ``views``: the views compared,
    every pair of them (default: every view besides the shared group that all runs recorded); ``shared``: the
    shared group's name (default: the one the runs recorded, see :class:`ReportData`); ``baseline``: the
    reference condition of the comparisons (default: the first group, in the order the runs were given).
    ``n_boot`` is accepted for compatibility: intervals over runs are Student t, not bootstraps.
    """

    def __init__(self, data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                 shared: str | None = None, baseline: str | None = None, n_boot: int | None = None) -> None:
        self.data = add_group_column(data, by) if by is not None else data
        self.by = by
        self.requested_views = views
        self.shared = shared if shared is not None else data.shared if data.shared is not None else analysis.SHARED
        self.baseline = baseline
        self.n_boot = n_boot

    # ----------------------------------------------------------------- runs and groups
    @cached_property
    def run_groups(self) -> pd.DataFrame:
        """One row per run (in the order given) with its group."""
        return analysis.run_groups(self.data.per_param, self.by)

    @cached_property
    def group_of(self) -> dict[str, str]:
        """Run label -> its group (the value of ``by``, or the run itself)."""
        return dict(zip(self.run_groups["run"], self.run_groups["group"]))

    @cached_property
    def groups(self) -> list[str]:
        """The groups in the one order every table and figure uses: the reference first, then as given."""
        given = list(dict.fromkeys(self.run_groups["group"]))
        if self.baseline is not None and str(self.baseline) not in given:
            raise ValueError(f"--baseline {self.baseline!r} is not a {self.by or 'run'}; they are {given}")
        return [self.reference] + [g for g in given if g != self.reference]

    @cached_property
    def reference(self) -> str:
        return str(self.baseline) if self.baseline is not None else str(self.run_groups["group"].iloc[0])

    # ----------------------------------------------------------------- analyses, each once
    @cached_property
    def cleaned(self) -> pd.DataFrame:
        """The rows every statistic uses (``analysis.clean``; of aggregated runs, the per-view sums of usable
        rows), computed once."""
        if self.data.sweep is not None:
            return self.data.per_param[self.data.per_param["used"]]
        return analysis.clean(self.data.per_param, self.data.per_step)

    @cached_property
    def view_dynamics(self) -> pd.DataFrame:
        if self.data.sweep is not None:
            return analysis.view_dynamics_from_sums(self.cleaned)
        return analysis.view_dynamics(self.data.per_param, self.data.per_step, cleaned=self.cleaned)

    @cached_property
    def matched(self) -> pd.DataFrame:
        """Matched layers of every pair of compared views at every step (``analysis.matched_pairs``); tables in
        memory only (aggregated runs keep :attr:`matched_layers` and :attr:`matched_cells`)."""
        if self.data.sweep is not None:
            raise ValueError("aggregated runs keep no per-step matched-layer table: use matched_layers or "
                             "matched_cells, or load_report_data(..., aggregate=False)")
        return analysis.matched_pairs(self.data.per_param, self.data.per_step, views=self.requested_views,
                                      shared=self.shared, cleaned=self.cleaned)

    @cached_property
    def matched_layers(self) -> pd.DataFrame:
        """Per pair, phase (and ``all``), run and matched depth: each view's mean gradient norm at that depth
        (``analysis.matched_layer_means``); ``attrs``: ``pairs`` and ``unmatched``."""
        if self.data.sweep is None:
            return analysis.matched_layer_means(self.matched)
        pairs = analysis.view_pairs(self.data.per_param, self.requested_views, self.shared)
        return sweep.sweep_layer_means(self.data.sweep, pairs)

    @cached_property
    def matched_cells(self) -> pd.DataFrame:
        """Per group, pair, depth and step: the mean log2 matched-layer ratio over the group's runs and their
        number ``n`` (the heatmap's input)."""
        ratios, runs, pairs = (sweep.ratio_table(self.matched) if self.data.sweep is None else
                               (self.data.sweep.ratios, self.data.sweep.runs, self.data.sweep.pairs))
        return sweep.ratio_cells(ratios, [self.group_of.get(r, r) for r in runs], pairs, self.pairs)

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
        return analysis.run_summary(self.data.per_param, self.data.per_step, vd=self.view_dynamics)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """The key table (``analysis.imbalance_summary``): per group, phase and pair of views."""
        return analysis.imbalance_summary(self.data.per_param, self.data.per_step, by=self.by, views=self.views,
                                          shared=self.shared, order=self.groups, vd=self.view_dynamics,
                                          layers=self.matched_layers, rs=self.run_summary)

    @cached_property
    def shares(self) -> pd.DataFrame:
        """Every view's share of the loss reduction per group and phase (``analysis.view_shares``)."""
        return analysis.view_shares(self.run_summary, self.run_groups, shared=self.shared, order=self.groups)

    @cached_property
    def pair_runs(self) -> pd.DataFrame:
        """Per run, phase and pair: the ratios every statistic across runs starts from."""
        return analysis.pair_runs(self.run_summary, layers=self.matched_layers).merge(self.run_groups, on="run")

    @cached_property
    def conditional_speed(self) -> pd.DataFrame:
        """Conditional learning speed of every pair, stacked (``view_a``, ``view_b`` columns)."""
        parts = [analysis.conditional_learning_speed(self.data.per_param, self.data.per_step, views=pair,
                                                     shared=self.shared, vd=self.view_dynamics).assign(
                     view_a=pair[0], view_b=pair[1]) for pair in self.pairs]
        return pd.concat(parts, ignore_index=True)

    @cached_property
    def exclusions(self) -> pd.DataFrame:
        return analysis.exclusions(self.data.per_param, self.data.per_step, cleaned=self.cleaned)

    @cached_property
    def run_metrics(self) -> pd.DataFrame:
        """Per run: the last logged value of every user scalar (empty when nothing was logged)."""
        return tables.run_metrics(self.data)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return tables.metric_table(self.run_metrics, self.group_of, order=self.groups)

    @cached_property
    def outcomes(self) -> list[str]:
        """The logged metrics the report compares and draws (test AUC first; see ``outcome_metrics``)."""
        names = [c for c in self.run_metrics.columns if c != "run"]
        return tables.outcome_metrics(names) if names else []

    @cached_property
    def utilization(self) -> pd.DataFrame:
        return tables.utilization_table(self.data, self.group_of, order=self.groups)

    @cached_property
    def probe(self) -> pd.DataFrame:
        return tables.probe_table(self.data, self.group_of, order=self.groups)

    @cached_property
    def comparisons(self) -> pd.DataFrame:
        """Every group against the reference (``analysis.compare_conditions``); empty with one group."""
        if len(self.groups) < 2:
            return pd.DataFrame(columns=analysis.comparisons.COLUMNS)
        values = tables.comparison_values(self)
        return analysis.compare_conditions(values, reference=self.reference, order=self.groups)

    @cached_property
    def view_notes(self) -> list[str]:
        """Sentences on views that not every run recorded (compared only where runs share them)."""
        return tables.view_set_notes(self.data.per_param, self.shared, self.views)

    @cached_property
    def warnings(self) -> pd.DataFrame:
        """Each run's notes and errors, runs never closed, steps measured at the optimizer step only."""
        from .notices import run_warnings
        return run_warnings({run: self.data.metas.get(run, {}) for run in self.group_of})

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
        return view_palette(analysis.view_order(self.data.per_param), shared=self.shared)

    @cached_property
    def group_palette(self) -> dict[str, str]:
        """One colour per group (condition), from a palette distinct from the views'."""
        from .style import condition_palette
        return condition_palette(self.groups)


def summary_table(data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                  shared: str | None = None, n_boot: int | None = None) -> pd.DataFrame:
    """The key table (``analysis.imbalance_summary``) for the report's grouping. ``shared``: the shared
    group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    return ReportNumbers(data, by=by, views=views, shared=shared, n_boot=n_boot).summary
