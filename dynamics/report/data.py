"""The report as data: the loaded runs (:class:`ReportData`) and every number one report shows
(:class:`ReportNumbers`), each computed once.

:class:`ReportNumbers` holds the report's choices (grouping, compared views, shared group, bootstrap size) and
computes, on first use and only once, the cleaned rows, the view dynamics, the matched layers, the key summary,
the conditional learning speed, the exclusions and the metric, utilization, probe and run tables. Tables,
sentences, figures and the Markdown/HTML writers read from it; none of them recomputes an analysis.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .. import analysis
from ..analysis.utilization import load_utilization
from ..store import loading as store, read_meta
from . import tables

__all__ = ["ReportData", "ReportNumbers", "load_report_data", "add_group_column", "summary_table"]


@dataclass
class ReportData:
    """Everything a report is made from: the tables plus, per run label, meta.json and utilization, and the
    name of the shared group (default: ``shared_name`` of the metas, which must agree; None: not recorded)."""
    per_param: pd.DataFrame
    per_step: pd.DataFrame
    metas: dict[str, dict] = field(default_factory=dict)
    utilization: dict[str, pd.DataFrame] = field(default_factory=dict)
    shared: str | None = None

    def __post_init__(self) -> None:
        if self.shared is None:
            self.shared = _shared_name(self.metas)


def _shared_name(metas: dict[str, dict]) -> str | None:
    """The shared group's name the runs recorded (``shared_name``; a run without one uses the default);
    None when no run records one. Runs that disagree cannot be compared view by view: an error."""
    if not any("shared_name" in m for m in metas.values()):
        return None
    names = {run: str(m.get("shared_name", analysis.SHARED)) for run, m in metas.items()}
    if len(set(names.values())) > 1:
        raise ValueError(f"the runs name their shared group differently ({names}); report them separately")
    return next(iter(names.values()))


def _meta_value(meta: dict, key: str) -> Any:
    if key in meta:
        return meta[key]
    config = meta.get("config")
    if isinstance(config, dict) and key in config:
        return config[key]
    return None


def add_group_column(data: ReportData, by: str) -> ReportData:
    """Make ``by`` a column of ``per_param``, from meta.json (top level, then ``config``) when absent."""
    if by in data.per_param.columns:
        return data
    values = {}
    for run, meta in data.metas.items():
        v = _meta_value(meta, by)
        if v is None:
            raise ValueError(f"run {run!r}: no metadata field {by!r} to group by (not in meta.json or its config)")
        values[run] = str(v)
    if not values:
        raise ValueError(f"cannot group by {by!r}: not a column and no run metadata was given")
    pp = data.per_param.assign(**{by: data.per_param["run"].astype(str).map(values).astype("category")})
    return replace(data, per_param=pp)


def load_report_data(runs: Sequence[str | os.PathLike], *, progress: bool = True) -> ReportData:
    """Load run directories (each a dynamics run; paths or globs) with their metadata and utilization files,
    under the run labels ``dynamics.load_runs`` gives (``store.run_labels``)."""
    paths = store.expand_runs(runs)
    metas, util = {}, {}
    for path, label in tqdm(list(zip(paths, store.run_labels(paths))), desc="reading runs", disable=not progress,
                            unit="run"):
        metas[label] = read_meta(path)  # a directory without meta.json is refused here, by name
        u = load_utilization(path)
        if u is not None:
            util[label] = u
    per_param, per_step = store.load_runs(paths)
    return ReportData(per_param, per_step, metas, util)


class ReportNumbers:
    """Every number of one report, computed on first use and only once.

    ``by``: the metadata field that groups runs (None: one group per run); ``views``: the two views compared
    (default: the first two besides the shared group); ``shared``: the shared group's name (default: the one
    the runs recorded, see :class:`ReportData`); ``n_boot``: bootstrap resamples of every interval.
    """

    def __init__(self, data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                 shared: str | None = None, n_boot: int = 2000) -> None:
        self.data = add_group_column(data, by) if by is not None else data
        self.by = by
        self.requested_views = views
        self.shared = shared if shared is not None else data.shared if data.shared is not None else analysis.SHARED
        self.n_boot = n_boot

    @cached_property
    def group_of(self) -> dict[str, str]:
        """Run label -> its group (the value of ``by``, or the run itself)."""
        runs = analysis.with_run(self.data.per_param)
        return dict(zip(runs["run"].astype(str), (runs[self.by] if self.by else runs["run"]).astype(str)))

    @cached_property
    def groups(self) -> list[str]:
        return sorted(set(self.group_of.values()))

    @cached_property
    def cleaned(self) -> pd.DataFrame:
        """The rows every statistic uses (``analysis.clean``), computed once."""
        return analysis.clean(self.data.per_param, self.data.per_step)

    @cached_property
    def view_dynamics(self) -> pd.DataFrame:
        return analysis.view_dynamics(self.data.per_param, self.data.per_step, cleaned=self.cleaned)

    @cached_property
    def matched(self) -> pd.DataFrame:
        """Matched-depth table of the compared views (``analysis.matched_depth``)."""
        return analysis.matched_depth(self.data.per_param, self.data.per_step, views=self.requested_views,
                                      shared=self.shared, cleaned=self.cleaned)

    @cached_property
    def views(self) -> tuple[str, str]:
        """The two views compared."""
        return self.matched.attrs["view_a"], self.matched.attrs["view_b"]

    @cached_property
    def summary(self) -> pd.DataFrame:
        """The key table (``analysis.imbalance_summary``) for the report's grouping."""
        return analysis.imbalance_summary(self.data.per_param, self.data.per_step, by=self.by, views=self.views,
                                          shared=self.shared, n_boot=self.n_boot, vd=self.view_dynamics,
                                          md=self.matched)

    @cached_property
    def conditional_speed(self) -> pd.DataFrame:
        return analysis.conditional_learning_speed(self.data.per_param, self.data.per_step, views=self.views,
                                                   shared=self.shared, vd=self.view_dynamics)

    @cached_property
    def exclusions(self) -> pd.DataFrame:
        return analysis.exclusions(self.data.per_param, self.data.per_step, cleaned=self.cleaned)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return tables.metric_table(self.data, self.group_of, n_boot=self.n_boot)

    @cached_property
    def utilization(self) -> pd.DataFrame:
        return tables.utilization_table(self.data, self.group_of, n_boot=self.n_boot)

    @cached_property
    def probe(self) -> pd.DataFrame:
        return tables.probe_table(self.data, self.group_of)

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


def summary_table(data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                  shared: str | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """The key table (``analysis.imbalance_summary``) for the report's grouping. ``shared``: the shared
    group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    return ReportNumbers(data, by=by, views=views, shared=shared, n_boot=n_boot).summary
