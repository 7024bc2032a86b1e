"""The report's input: the runs reduced to per run, view and step sums, with their metadata and utilization files
(:class:`ReportData`). One shape, whatever the number of runs (one run included): each run is read and reduced
by :func:`dynamics.analysis.sweep.aggregate_runs` before the next is read.

Every number computed from it lives in :class:`dynamics.report.computed.ReportNumbers`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .. import analysis
from ..analysis.sweep import Sweep, aggregate_runs
from ..analysis.utilization import load_utilization
from ..store import loading as store, read_meta

__all__ = ["ReportData", "load_report_data", "add_group_column"]


@dataclass
class ReportData:
    """Everything a report is made from: the runs reduced to sums (:class:`~dynamics.analysis.sweep.Sweep`), plus,
    per run label, meta.json and utilization, and the name of the shared group (default: ``shared_name`` of the
    metas, which must agree; None: not recorded). ``sums`` (the sweep's ``views``): one row per run, view and
    recorded step, with the run and view columns of a per-param table; ``per_step`` as ``load_runs`` gives it."""
    sweep: Sweep
    metas: dict[str, dict] = field(default_factory=dict)
    utilization: dict[str, pd.DataFrame] = field(default_factory=dict)
    shared: str | None = None

    def __post_init__(self) -> None:
        if self.shared is None:
            self.shared = _shared_name(self.metas)

    @property
    def sums(self) -> pd.DataFrame:
        return self.sweep.views

    @property
    def per_step(self) -> pd.DataFrame:
        return self.sweep.per_step


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
    """Make ``by`` a column of ``sums``, from meta.json (top level, then ``config``) when absent."""
    if by in data.sums.columns:
        return data
    values = {}
    for run, meta in data.metas.items():
        v = _meta_value(meta, by)
        if v is None:
            raise ValueError(f"run {run!r}: no metadata field {by!r} to group by (not in meta.json or its config)")
        values[run] = str(v)
    if not values:
        raise ValueError(f"cannot group by {by!r}: not a column and no run metadata was given")
    sums = data.sums.assign(**{by: data.sums["run"].astype(str).map(values).astype("category")})
    return replace(data, sweep=replace(data.sweep, views=sums))


def load_report_data(runs: Sequence[str | os.PathLike], *, progress: bool = True) -> ReportData:
    """Load run directories (each a dynamics run; paths or globs) with their metadata and utilization files,
    under the run labels ``dynamics.load_runs`` gives (``store.run_labels``), each run reduced to its per-view
    sums as it is read (:func:`dynamics.analysis.sweep.aggregate_runs`: memory for one run plus the sums)."""
    paths = store.expand_runs(runs)
    metas, util = {}, {}
    for path, label in tqdm(list(zip(paths, store.run_labels(paths))), desc="reading runs", disable=not progress,
                            unit="run"):
        metas[label] = read_meta(path)  # a directory without meta.json is refused here, by name
        u = load_utilization(path)
        if u is not None:
            util[label] = u
    return ReportData(aggregate_runs(paths, progress=progress), metas, util)
