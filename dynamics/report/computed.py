"""Every number of one report, computed on first use and only once (:class:`ReportNumbers`).

It holds the report's choices (grouping, compared views, shared group, reference condition) and computes the
cleaned rows, view dynamics, matched layers of every pair of views, run-level summaries, the key table, the
shares of every view, the comparisons of conditions with the reference, the conditional learning speed, the
exclusions and the metric, utilization, probe and run tables. Tables, sentences, figures and the writers read
from it; none of them recomputes an analysis.

Flagged runs (:func:`dynamics.report.notices.flagged_runs`: never closed, recorder errors, a step count a tenth
away from its group's median) are left out of every number unless ``include_flagged``; runs that recorded no
step and copies of another run (the same ``run_id``) never count. Every p-value of the report (the key table's
sign-flip tests and the comparisons between conditions) is in one Holm family.
"""
from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import analysis
from ..analysis import sweep
from ..analysis.comparisons import holm_family
from . import notices, tables
from .data import ReportData, add_group_column

__all__ = ["ReportNumbers", "summary_table", "REFERENCE_NAMES"]

#: condition names taken as the reference when ``baseline`` is not given (the first one present)
REFERENCE_NAMES = ("separate", "baseline")


def _drop_runs(df: pd.DataFrame | None, drop: set[str]) -> pd.DataFrame | None:
    """``df`` without the rows of the runs in ``drop`` (unused run and condition categories removed)."""
    if df is None or "run" not in df.columns or not drop:
        return df
    out = df[~df["run"].astype(str).isin(drop)]
    for column in ("run", "condition"):
        if column in out.columns and isinstance(out[column].dtype, pd.CategoricalDtype):
            out = out.assign(**{column: out[column].cat.remove_unused_categories()})
    return out


def _sweep_without(s: sweep.Sweep, drop: set[str]) -> sweep.Sweep:
    """A sweep without the runs in ``drop`` (its ratio table's run indices renumbered)."""
    kept = [i for i, r in enumerate(s.runs) if r not in drop]
    renumber = np.full(len(s.runs), -1, np.int32)
    renumber[kept] = np.arange(len(kept), dtype=np.int32)
    run = s.ratios["run"].to_numpy()
    mask = renumber[run] >= 0
    ratios = s.ratios.filter(pa.array(mask))
    ratios = ratios.set_column(ratios.column_names.index("run"), "run", pa.array(renumber[run[mask]]))
    return replace(s, views=_drop_runs(s.views, drop), per_step=_drop_runs(s.per_step, drop),
                   layers=_drop_runs(s.layers, drop), depths=_drop_runs(s.depths, drop), ratios=ratios,
                   runs=[s.runs[i] for i in kept])


def _without(data: ReportData, drop: set[str]) -> ReportData:
    """``data`` without the runs in ``drop``, in either of its shapes (per-tensor rows or a sweep's sums)."""
    if not drop:
        return data
    keep = {k: v for k, v in data.metas.items() if k not in drop}
    util = {k: v for k, v in data.utilization.items() if k not in drop}
    if data.sweep is not None:
        s = _sweep_without(data.sweep, drop)
        return replace(data, per_param=s.views, per_step=s.per_step, metas=keep, utilization=util, sweep=s)
    return replace(data, per_param=_drop_runs(data.per_param, drop), per_step=_drop_runs(data.per_step, drop),
                   metas=keep, utilization=util)


class ReportNumbers:
    """Every number of one report.

    ``by``: the metadata field that groups runs (None: one group per run); ``views``: the views compared,
    every pair of them (default: every view besides the shared group that all runs recorded); ``shared``: the
    shared group's name (default: the one the runs recorded, see :class:`ReportData`); ``baseline``: the
    reference condition of the comparisons (default: a group named as in :data:`REFERENCE_NAMES`; with several
    groups and none of them, the comparisons are refused with the list of groups); ``metrics``: the outcome
    metrics compared (default: the scalars logged once, at the end of every run; see
    :func:`tables.choose_outcomes`); ``include_flagged``: keep flagged runs in the statistics.
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
        self.flagged = self._flag(full)
        drop = set(self.flagged.loc[self.flagged["always"] | (not include_flagged), "run"])
        if self.all_metas and drop >= set(self.all_metas):
            reasons = "; ".join(f"{r.run}: {r.reason}" for r in self.flagged.itertuples(index=False))
            raise ValueError(f"no run left to report: {reasons}"
                             + ("" if include_flagged else " (--include-flagged keeps flagged runs)"))
        self.data = _without(full, drop)

    def _flag(self, full: ReportData) -> pd.DataFrame:
        """:func:`notices.flagged_runs` of every loaded run (its recorded steps counted from ``per_param``)."""
        pp = analysis.with_run(full.per_param)
        steps = pp.groupby(pp["run"].astype(str), observed=True)["step"].nunique().to_dict()
        groups = analysis.run_groups(full.per_param, self.by)
        return notices.flagged_runs(self.all_metas, steps, dict(zip(groups["run"], groups["group"])))

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
        """The groups in the one order every table and figure uses: the reference first (when there is one),
        then as given."""
        given = list(dict.fromkeys(self.run_groups["group"]))
        ref = self._reference_or_none
        return given if ref is None else [ref] + [g for g in given if g != ref]

    @cached_property
    def _reference_or_none(self) -> str | None:
        """The reference group: ``baseline`` (checked), else the one of :data:`REFERENCE_NAMES` present, else
        the only group; None when there are several groups and none is named so."""
        given = list(dict.fromkeys(self.run_groups["group"]))
        what = self.by or "run"
        if self.baseline is not None:
            if str(self.baseline) not in given:
                raise ValueError(f"--baseline {self.baseline!r} is not a {what}; the {what}s are {given}")
            return str(self.baseline)
        if len(given) == 1:
            return given[0]
        return next((n for n in REFERENCE_NAMES if n in given), None)

    @cached_property
    def reference(self) -> str:
        """The reference group of the comparisons (:attr:`_reference_or_none`); refused, with the list of
        groups, when none is named."""
        if self._reference_or_none is None:
            what = self.by or "run"
            raise ValueError(f"which {what} is the reference? none is called {' or '.join(REFERENCE_NAMES)}: "
                             f"pass --baseline with one of {list(dict.fromkeys(self.run_groups['group']))}")
        return self._reference_or_none

    def check(self) -> None:
        """Raise now what a report would fail on later (no reference among several groups), before any file is
        written."""
        if len(self.groups) > 1:
            self.reference  # noqa: B018 (raises when none can be chosen)

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
    def step_ranges(self) -> pd.DataFrame:
        """Per run: its group and its first and last recorded step."""
        pp = analysis.with_run(self.data.per_param)
        out = pp.groupby(pp["run"].astype(str), observed=True)["step"].agg(["min", "max"]).reset_index()
        return out.rename(columns={"min": "first", "max": "last"}).assign(group=lambda d: d["run"].map(self.group_of))

    @cached_property
    def uneven_phases(self) -> dict[str, str]:
        """Group -> why its phases are not shown: its runs cover different steps, so early, middle and late
        would mean different steps in different runs (phases need a common step grid)."""
        out = {}
        for group, sub in self.step_ranges.groupby("group", sort=False):
            if sub[["first", "last"]].drop_duplicates().shape[0] > 1:
                spans = ", ".join(f"{r.run} {r.first}–{r.last}" for r in sub.itertuples(index=False))
                out[group] = (f"The phases (early, middle, late) of {group} are not shown: its runs cover "
                              f"different steps ({spans}), so a phase would mean different steps in different runs.")
        return out

    def _whole_run_only(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` without the phase rows of the groups in :attr:`uneven_phases`."""
        if not self.uneven_phases or table.empty:
            return table
        bad = table["group"].isin(list(self.uneven_phases)) & (table["phase"].astype(str) != "all")
        return table[~bad].reset_index(drop=True)

    @cached_property
    def _summary_rows(self) -> pd.DataFrame:
        return self._whole_run_only(analysis.imbalance_summary(
            self.data.per_param, self.data.per_step, by=self.by, views=self.views, shared=self.shared,
            order=self.groups, vd=self.view_dynamics, layers=self.matched_layers, rs=self.run_summary))

    @cached_property
    def _family(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The key table and the comparisons, every p-value of both Holm-adjusted in one family."""
        summary = self._summary_rows
        if len(self.groups) < 2 or self._reference_or_none is None:
            comparisons = pd.DataFrame(columns=analysis.comparisons.COLUMNS)
        else:
            comparisons = analysis.compare_conditions(tables.comparison_values(self), reference=self.reference,
                                                      order=self.groups)
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
        return tables.view_set_notes(self.data.per_param, self.shared, self.views)

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
        return view_palette(analysis.view_order(self.data.per_param), shared=self.shared)

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
