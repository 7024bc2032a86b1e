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
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..schema import PARAM_ID, QUANTITIES
from ..store.loading import RunRows, concat_runs, param_layers, read_runs, tag_run
from .cleaning import assign_phase, skipped_steps, bad_rows, finite_or_nan, phase_labels, usable

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
        layers = _layer_sums(label, rows)
        recorded = rows.per_step["recorded"].to_numpy(bool)
        steps = rows.per_step["step"].to_numpy(np.int64)[recorded]  # the params' steps (read_rows checks), sorted
        phases = assign_phase(pd.Series(steps), pd.Series(np.zeros(len(steps))), self.n_phases).codes
        order = rows.view_order
        views = _view_sums(layers).to_pandas()
        views = views.assign(view=pd.Categorical.from_codes(views["view"], categories=order),
                             phase=pd.Categorical.from_codes(phases[np.searchsorted(steps, views["step"])],
                                                             categories=phase_labels(self.n_phases)))
        self.views.append(tag_run(views, label, rows.meta))
        norms, present = _depth_norms(layers, len(order), steps)
        view, depth = np.nonzero(present.any(axis=2))
        self.depths.append(pd.DataFrame({"run": label, "view": np.array(order, dtype=object)[view], "depth": depth}))
        for a, b in itertools.combinations(range(len(order)), 2):
            self._match(label, (order[a], order[b]), norms[[a, b]], present[a] & present[b], steps, phases)

    def _match(self, label: str, pair: tuple[str, str], norms: np.ndarray, both: np.ndarray, steps: np.ndarray,
               phases: np.ndarray) -> None:
        """Depth i of the pair's first view against depth i of its second (``norms``: both views' depth x step
        norms), at every step both have it (``both``)."""
        if not both.any():
            return
        if pair not in self.pairs:
            self.pairs.append(pair)
        parts = []
        for phase in range(self.n_phases):
            inside = both & (phases == phase)[None, :]
            n = inside.sum(axis=1)
            depth = np.nonzero(n)[0]
            parts.append(pd.DataFrame({"depth": depth, "phase": phase_labels(self.n_phases)[phase],
                                       "sum_a": np.where(inside, norms[0], 0.0).sum(axis=1)[depth],
                                       "sum_b": np.where(inside, norms[1], 0.0).sum(axis=1)[depth], "n": n[depth]}))
        self.layers.append(pd.concat(parts, ignore_index=True).assign(run=label, view_a=pair[0], view_b=pair[1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            log2 = np.log2(norms[0] / norms[1])
        depth, step = np.nonzero(both & np.isfinite(log2))
        self.ratios.append(pa.table({"run": np.full(len(depth), len(self.runs) - 1, np.int32),
                                     "pair": np.full(len(depth), self.pairs.index(pair), np.int32),
                                     "depth": depth.astype(np.int32), "step": steps[step],
                                     "log2_ratio": log2[depth, step]}))

    def result(self) -> Sweep:
        if not self.views:
            raise ValueError(f"nothing was recorded: no committed step in {', '.join(self.runs)} (a run that "
                             "stopped before its first flush records none)")
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


def _layer_sums(label: str, rows: RunRows) -> pa.Table:
    """One run's sums per view (code into ``rows.view_order``), layer, depth and recorded step over its usable
    rows (:func:`~dynamics.analysis.cleaning.usable`; a non-finite update_sq or lca counts as missing), null
    where the layer has none, with ``norm`` = √Σ‖g‖²."""
    c = rows.columns
    skipped = skipped_steps(rows.per_step, [label])["step"].to_numpy(np.int64)
    keep = usable(c["step"], bad_rows(c["grad_sq"], c["param_sq"], c["finite"]), skipped, c["has_grad"])
    recorded = rows.view_codes >= 0
    keep, ids = keep[recorded], c[PARAM_ID][recorded]
    _, layer_of, depth_of = param_layers(rows.meta["parameters"])
    values = {q: np.where(keep, finite_or_nan(c[q][recorded]), np.nan) for q in QUANTITIES}
    table = pa.table({"view": rows.view_codes[recorded], "layer": layer_of[ids], "depth": depth_of[ids],
                      "step": c["step"][recorded], **{q: pa.array(v, from_pandas=True) for q, v in values.items()}})
    layers = table.group_by(["view", "layer", "depth", "step"]).aggregate([(q, "sum", _SUM) for q in QUANTITIES])
    layers = layers.rename_columns([n.removesuffix("_sum") for n in layers.column_names])
    return layers.append_column("norm", pc.sqrt(layers["grad_sq"]))


def _view_sums(layers: pa.Table) -> pa.Table:
    """Per view and recorded step: the sums of the quantities (null: no usable row), ``layer_grad_norm`` (mean
    over the layers with usable rows of their norms) and ``used``."""
    sums = layers.group_by(["view", "step"]).aggregate([*((q, "sum", _SUM) for q in QUANTITIES), ("norm", "mean")])
    sums = sums.rename_columns([{"norm_mean": "layer_grad_norm"}.get(n, n.removesuffix("_sum"))
                                for n in sums.column_names])
    sums = sums.append_column("used", pc.is_valid(sums["grad_sq"]))
    return sums.sort_by([("view", "ascending"), ("step", "ascending")])


def _depth_norms(layers: pa.Table, n_views: int, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view, depth and step (of ``steps``), dense: √ of the depth's Σ‖g‖² over the usable rows, and whether
    the depth has usable rows there."""
    used = layers.filter(pc.is_valid(layers["grad_sq"]))
    view, depth, step, sq = (used[c].to_numpy() for c in ("view", "depth", "step", "grad_sq"))
    shape = (n_views, int(depth.max()) + 1 if len(depth) else 0, len(steps))
    flat = np.ravel_multi_index((view, depth, np.searchsorted(steps, step)), shape)
    total = np.bincount(flat, weights=sq, minlength=int(np.prod(shape))).reshape(shape)
    return np.sqrt(total), np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape) > 0


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
