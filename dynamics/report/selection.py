"""Which runs a report counts and on which steps its phases are defined.

Flagged runs (:func:`dynamics.report.notices.flagged_runs`) are left out of the report's data unless kept
(``include_flagged``) of :class:`~dynamics.report.data.ReportData`'s sums; runs that recorded no step and copies of another run never count. Phases (early, middle, late) are shown
for a group only when its runs cover the same steps (one step grid); the reference group is chosen by name.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import analysis
from ..analysis import sweep
from . import notices
from .data import ReportData

__all__ = ["REFERENCE_NAMES", "flag_runs", "counted", "without_runs", "uneven_phases", "whole_run_only",
           "named_reference"]

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


def without_runs(data: ReportData, drop: set[str]) -> ReportData:
    """``data`` without the runs in ``drop``."""
    if not drop:
        return data
    keep = {k: v for k, v in data.metas.items() if k not in drop}
    util = {k: v for k, v in data.utilization.items() if k not in drop}
    return replace(data, sweep=_sweep_without(data.sweep, drop), metas=keep, utilization=util)


def flag_runs(full: ReportData, by: str | None) -> pd.DataFrame:
    """:func:`notices.flagged_runs` of every loaded run (its recorded steps counted from ``sums``, its group
    from ``by``)."""
    pp = analysis.with_run(full.sums)
    steps = pp.groupby(pp["run"].astype(str), observed=True)["step"].nunique().to_dict()
    groups = analysis.run_groups(full.sums, by)
    return notices.flagged_runs(dict(full.metas), steps, dict(zip(groups["run"], groups["group"])))


def counted(full: ReportData, flagged: pd.DataFrame, include_flagged: bool) -> ReportData:
    """The runs the statistics use: ``full`` without the flagged runs (without only those that can never count
    when ``include_flagged``); an error naming every run and why when none is left."""
    drop = set(flagged.loc[flagged["always"] | (not include_flagged), "run"])
    if full.metas and drop >= set(full.metas):
        reasons = "; ".join(f"{r.run}: {r.reason}" for r in flagged.itertuples(index=False))
        raise ValueError(f"no run left to report: {reasons}"
                         + ("" if include_flagged else " (--include-flagged keeps flagged runs)"))
    return without_runs(full, drop)


def uneven_phases(sums: pd.DataFrame, group_of: dict[str, str]) -> dict[str, str]:
    """Group -> a sentence saying why its phases are not shown: its runs' first or last recorded steps differ,
    so early, middle and late (each run's range cut in three) would mean different steps in different runs."""
    pp = analysis.with_run(sums)
    spans = pp.groupby(pp["run"].astype(str), observed=True)["step"].agg(["min", "max"]).reset_index()
    spans["group"] = spans["run"].map(group_of)
    out = {}
    for group, sub in spans.groupby("group", sort=False):
        if sub[["min", "max"]].drop_duplicates().shape[0] > 1:
            runs = ", ".join(f"{r.run} {r.min}–{r.max}" for r in sub.itertuples(index=False))
            out[group] = (f"The phases (early, middle, late) of {group} are not shown: its runs cover different "
                          f"steps ({runs}), so a phase would mean different steps in different runs.")
    return out


def whole_run_only(table: pd.DataFrame, uneven: dict[str, str]) -> pd.DataFrame:
    """``table`` (``group`` and ``phase`` columns) without the phase rows of the groups in ``uneven``."""
    if not uneven or table.empty:
        return table
    bad = table["group"].isin(list(uneven)) & (table["phase"].astype(str) != "all")
    return table[~bad].reset_index(drop=True)


def named_reference(groups: Sequence[str], baseline: str | None, by: str | None) -> str | None:
    """The reference group: ``baseline`` (an error listing the groups when it is none of them), else the only
    group, else the first of :data:`REFERENCE_NAMES` present; None when several groups have none of those names."""
    what = by or "run"
    if baseline is not None:
        if str(baseline) not in groups:
            raise ValueError(f"--baseline {baseline!r} is not a {what}; the {what}s are {list(groups)}")
        return str(baseline)
    if len(groups) == 1:
        return groups[0]
    return next((n for n in REFERENCE_NAMES if n in groups), None)
