"""Many runs reduced one at a time, in Arrow, to the per run, view and step sums that a report of a sweep needs.

A sweep of hundreds of runs does not fit as one per-tensor table (runs x tensors x steps rows). Each run is read
and checked as :func:`dynamics.load` reads it (:func:`dynamics.store.loading.read_runs`: committed parts only,
every part verified, shared tensors split per view), its rows kept by the rule of :func:`dynamics.analysis.clean`
(:func:`~dynamics.analysis.cleaning.usable`), and summed with ``pyarrow.Table.group_by`` before the next run is
read: the stored quantities per view and step, each layer's ‖g‖² (for the mean layer norm) and each depth's (for
the matched layers of every pair of views, summed per phase). Memory is one run plus the sums; norms, ratios and
shares are derived after the sums, as everywhere (:mod:`dynamics.analysis.derived`).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..schema import PARAM_ID, QUANTITIES
from ..store.loading import RunRows, concat_runs, param_layers, read_runs, tag_run
from .cleaning import _assign_phase, _skipped_steps, bad_rows, finite_or_nan, phase_labels, usable

__all__ = ["Sweep", "aggregate_runs", "sweep_layer_means", "ratio_table", "ratio_cells"]

_SUM = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)  # NaN (null) where no row has the quantity


@dataclass
class Sweep:
    """Runs reduced by :func:`aggregate_runs`.

    ``views``: one row per run, view and recorded step, with the run columns and view categories of
    :func:`dynamics.load_runs`, ``phase``, ``used`` (a row of the view was usable at that step), the sums of the
    stored quantities over the usable rows and ``layer_grad_norm`` (mean over the view's layers of each layer's
    gradient norm). ``per_step``: as :func:`dynamics.load_runs` returns it. ``layers``: per run, pair of the
    run's views (``view_a`` before ``view_b`` in its view order), depth and phase: ``sum_a``, ``sum_b`` (the two
    views' gradient norms at that depth summed over the steps where both have it) and ``n`` (those steps).
    ``ratios``: per ``run`` (index into ``runs``), ``pair`` (index into ``pairs``), depth and step, the finite
    ``log2_ratio`` of the two norms. ``depths``: the (run, view, depth) that have usable rows."""
    views: pd.DataFrame
    per_step: pd.DataFrame
    layers: pd.DataFrame
    ratios: pa.Table
    depths: pd.DataFrame
    runs: list[str]
    pairs: list[tuple[str, str]]


def aggregate_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike], *, n_phases: int = 3,
                   progress: bool = False) -> Sweep:
    """Read every run (paths and globs as :func:`dynamics.load_runs` takes them) and reduce it before reading the
    next (see the module docstring). A run that cannot be read raises the error :func:`dynamics.load` raises,
    naming its file."""
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    sweep = _Reduction(n_phases)
    for label, rows in tqdm(read_runs(paths_or_glob), desc="aggregating runs", unit="run", disable=not progress):
        sweep.add(label, rows)
    return sweep.result()


class _Reduction:
    """The sums of the runs added so far (:func:`aggregate_runs`)."""

    def __init__(self, n_phases: int) -> None:
        self.n_phases = n_phases
        self.runs: list[str] = []
        self.pairs: list[tuple[str, str]] = []
        self.views: list[pd.DataFrame] = []
        self.per_steps: list[pd.DataFrame] = []
        self.layers: list[pd.DataFrame] = []
        self.ratios: list[pa.Table] = []
        self.depths: list[pd.DataFrame] = []

    def add(self, label: str, rows: RunRows) -> None:
        self.per_steps.append(tag_run(rows.per_step.copy(), label, rows.meta))
        self.runs.append(label)
        if not len(rows.view_codes):  # nothing recorded: as absent from per_param as in load_runs
            return
        kept = _usable_rows(label, rows)
        steps = np.unique(rows.columns["step"])  # the phases cut the full recorded range
        phases = _assign_phase(pd.Series(steps), pd.Series(np.zeros(len(steps))), self.n_phases).codes

        def phase_of(step: np.ndarray) -> np.ndarray:
            return phases[np.searchsorted(steps, step)]
        order = rows.view_order
        views = _view_sums(kept, rows).to_pandas()
        views = views.assign(view=pd.Categorical.from_codes(views["view"], categories=order),
                             phase=pd.Categorical.from_codes(phase_of(views["step"].to_numpy()),
                                                             categories=phase_labels(self.n_phases)))
        self.views.append(tag_run(views, label, rows.meta))
        norms = kept.group_by(["view", "depth", "step"]).aggregate([("grad_sq", "sum", _SUM)])
        norms = norms.append_column("norm", pc.sqrt(norms["grad_sq_sum"])).drop_columns("grad_sq_sum")
        present = norms.group_by(["view", "depth"]).aggregate([]).to_pandas()
        self.depths.append(pd.DataFrame({"run": label, "view": [order[v] for v in present["view"]],
                                         "depth": present["depth"]}))
        for a, b in itertools.combinations(range(len(order)), 2):
            self._match(len(self.runs) - 1, label, norms, (order[a], order[b]), (a, b), phase_of)

    def _match(self, run: int, label: str, norms: pa.Table, pair: tuple[str, str], codes: tuple[int, int],
               phase_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """Depth i of the pair's first view against depth i of its second, at every step both have it."""
        sides = [norms.filter(pc.equal(norms["view"], c)).drop_columns("view") for c in codes]
        both = sides[0].rename_columns(["depth", "step", "a"]).join(sides[1].rename_columns(["depth", "step", "b"]),
                                                                     keys=["depth", "step"], join_type="inner")
        if not both.num_rows:
            return
        if pair not in self.pairs:
            self.pairs.append(pair)
        step, a, b = (both[c].to_numpy() for c in ("step", "a", "b"))
        sums = both.append_column("phase", pa.array(phase_of(step))).group_by(["depth", "phase"]).aggregate(
            [("a", "sum"), ("b", "sum"), ("a", "count")]).to_pandas()
        self.layers.append(pd.DataFrame({"run": label, "view_a": pair[0], "view_b": pair[1], "depth": sums["depth"],
                                         "phase": np.array(phase_labels(self.n_phases))[sums["phase"]],
                                         "sum_a": sums["a_sum"], "sum_b": sums["b_sum"], "n": sums["a_count"]}))
        with np.errstate(divide="ignore", invalid="ignore"):
            log2 = np.log2(a / b)
        finite = np.isfinite(log2)
        self.ratios.append(pa.table({"run": np.full(finite.sum(), run, np.int32),
                                     "pair": np.full(finite.sum(), self.pairs.index(pair), np.int32),
                                     "depth": both["depth"].to_numpy()[finite], "step": step[finite],
                                     "log2_ratio": log2[finite]}))

    def result(self) -> Sweep:
        if not self.views:
            raise ValueError("per_param has no rows: nothing was recorded")
        views = concat_runs(self.views)
        if not views["used"].any():
            raise ValueError("no usable rows: every recorded step was skipped, non-finite or without gradients")
        views["view"] = pd.Categorical(views["view"].astype("object"), categories=list(dict.fromkeys(
            c for f in self.views for c in f["view"].cat.categories)))
        columns = ["run", "view_a", "view_b", "depth", "phase", "sum_a", "sum_b", "n"]
        layers = pd.concat(self.layers, ignore_index=True) if self.layers else pd.DataFrame(columns=columns)
        ratios = pa.concat_tables(self.ratios) if self.ratios else pa.table(
            {"run": pa.array([], pa.int32()), "pair": pa.array([], pa.int32()), "depth": pa.array([], pa.int32()),
             "step": pa.array([], pa.int64()), "log2_ratio": pa.array([], pa.float64())})
        return Sweep(views, concat_runs(self.per_steps), layers, ratios, pd.concat(self.depths, ignore_index=True),
                     self.runs, self.pairs)


def _usable_rows(label: str, rows: RunRows) -> pa.Table:
    """One run's usable rows (:func:`~dynamics.analysis.cleaning.usable`) of a view, as Arrow: view (code into
    ``rows.view_order``), layer, depth, step and the stored quantities (a non-finite update_sq or lca null)."""
    c = rows.columns
    skipped = _skipped_steps(rows.per_step, [label])["step"].to_numpy(np.int64)
    keep = usable(c["step"], bad_rows(c["grad_sq"], c["param_sq"], c["finite"]), skipped, c["has_grad"])
    keep &= rows.view_codes >= 0
    _, layer_of, depth_of = param_layers(rows.meta["parameters"])
    ids = c[PARAM_ID][keep]
    return pa.table({"view": rows.view_codes[keep], "layer": layer_of[ids], "depth": depth_of[ids],
                     "step": c["step"][keep], "grad_sq": c["grad_sq"][keep], "param_sq": c["param_sq"][keep],
                     **{q: pa.array(finite_or_nan(c[q][keep]), from_pandas=True) for q in ("update_sq", "lca")}})


def _view_sums(kept: pa.Table, rows: RunRows) -> pa.Table:
    """Per view and recorded step: ``used``, the sums of the quantities over the usable rows (null: none) and
    ``layer_grad_norm``."""
    sums = kept.group_by(["view", "step"]).aggregate([(q, "sum", _SUM) for q in QUANTITIES])
    sums = sums.rename_columns([c.removesuffix("_sum") for c in sums.column_names])
    layer = kept.group_by(["view", "layer", "step"]).aggregate([("grad_sq", "sum")])
    layer = layer.append_column("norm", pc.sqrt(layer["grad_sq_sum"])).group_by(["view", "step"]).aggregate(
        [("norm", "mean")]).rename_columns(["view", "step", "layer_grad_norm"])
    recorded = rows.view_codes >= 0
    every = pa.table({"view": rows.view_codes[recorded], "step": rows.columns["step"][recorded]})
    every = every.group_by(["view", "step"]).aggregate([])
    out = every.join(sums, keys=["view", "step"], join_type="left outer").join(layer, keys=["view", "step"],
                                                                               join_type="left outer")
    out = out.append_column("used", pc.is_valid(out["grad_sq"]))
    return out.sort_by([("view", "ascending"), ("step", "ascending")])


def sweep_layer_means(sweep: Sweep, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """:func:`dynamics.analysis.matched_layer_means` of a sweep for ``pairs`` (a pair a run holds the other way
    round is turned): per pair, phase (and ``all``), run and depth the mean ``a`` and ``b`` over the phase's
    steps. ``attrs``: ``pairs``, ``quantity`` and ``unmatched`` (``"a/b"`` -> depths in only one of the two
    views), as :func:`dynamics.analysis.matched_pairs` gives them."""
    frames, unmatched, depths = [], {}, sweep.depths
    for a, b in pairs:
        ab = sweep.layers[(sweep.layers["view_a"] == a) & (sweep.layers["view_b"] == b)]
        ba = sweep.layers[(sweep.layers["view_a"] == b) & (sweep.layers["view_b"] == a)]
        sub = pd.concat([ab, ba.rename(columns={"sum_a": "sum_b", "sum_b": "sum_a"})], ignore_index=True)
        whole = sub.groupby(["run", "depth"], sort=False)[["sum_a", "sum_b", "n"]].sum().reset_index()
        for part in (sub, whole.assign(phase="all")):
            frames.append(pd.DataFrame({"view_a": a, "view_b": b, "phase": part["phase"], "run": part["run"],
                                        "depth": part["depth"], "a": part["sum_a"] / part["n"],
                                        "b": part["sum_b"] / part["n"]}))
        unmatched[f"{a}/{b}"] = sorted(set(depths.loc[depths["view"] == a, "depth"])
                                       ^ set(depths.loc[depths["view"] == b, "depth"]))
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(pairs=list(pairs), quantity="grad_norm", unmatched=unmatched)
    return out


def ratio_table(matched: pd.DataFrame) -> tuple[pa.Table, list[str], list[tuple[str, str]]]:
    """The finite log2 ratios of an in-memory :func:`dynamics.analysis.matched_pairs` table in the form of
    :attr:`Sweep.ratios`, with its ``runs`` and ``pairs``."""
    md = matched[np.isfinite(matched["log2_ratio"].to_numpy(float))]
    runs, run_names = pd.factorize(md["run"].astype(str))
    pairs, pair_names = pd.factorize(md["view_a"].astype(str) + "\0" + md["view_b"].astype(str))
    table = pa.table({"run": runs.astype(np.int32), "pair": pairs.astype(np.int32),
                      "depth": md["depth"].to_numpy(np.int32), "step": md["step"].to_numpy(np.int64),
                      "log2_ratio": md["log2_ratio"].to_numpy(float)})
    return table, list(run_names), [tuple(p.split("\0")) for p in pair_names]


def ratio_cells(ratios: pa.Table, group_of_run: Sequence[str], pairs_of: Sequence[tuple[str, str]],
                pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Per group, pair of ``pairs``, depth and step: the mean finite log2 matched-layer ratio over the group's
    runs (``log2_ratio``) and their number (``n``), summed in Arrow. ``ratios``: :attr:`Sweep.ratios` (or
    :func:`ratio_table`); ``group_of_run`` the group of each of its run codes, ``pairs_of`` its pairs."""
    groups = pd.Categorical(list(group_of_run))
    sign = np.zeros(len(pairs_of))
    wanted = np.full(len(pairs_of), -1, np.int32)
    for k, (a, b) in enumerate(pairs):
        for code, (x, y) in enumerate(pairs_of):
            if (x, y) in ((a, b), (b, a)):
                wanted[code], sign[code] = k, 1.0 if (x, y) == (a, b) else -1.0
    codes = ratios["pair"].to_numpy()
    keep = wanted[codes] >= 0 if len(pairs_of) else np.zeros(len(codes), bool)
    table = pa.table({"group": groups.codes[ratios["run"].to_numpy()[keep]], "pair": wanted[codes[keep]],
                      "depth": ratios["depth"].to_numpy()[keep], "step": ratios["step"].to_numpy()[keep],
                      "value": ratios["log2_ratio"].to_numpy()[keep] * sign[codes[keep]]})
    cells = table.group_by(["group", "pair", "depth", "step"]).aggregate([("value", "sum"), ("value", "count")])
    cells = cells.sort_by([(k, "ascending") for k in ("group", "pair", "depth", "step")]).to_pandas()
    which = cells["pair"].to_numpy()
    return pd.DataFrame({"_group": np.asarray(groups.categories, dtype=object)[cells["group"].to_numpy()],
                         "view_a": np.array([a for a, _ in pairs], dtype=object)[which],
                         "view_b": np.array([b for _, b in pairs], dtype=object)[which],
                         "depth": cells["depth"], "step": cells["step"],
                         "log2_ratio": cells["value_sum"] / cells["value_count"], "n": cells["value_count"]})
