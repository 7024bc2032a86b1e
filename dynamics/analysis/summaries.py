"""Run-level summaries, then statistics across runs: the key imbalance table and each view's share.

Each run is summarised first (per phase: mean gradient norm per view, share of the loss reduction, the ratio
of two views' mean gradient norms, the mean log ratio over matched layers); the statistics across runs treat
the run as the unit: Student-t intervals over runs (geometric for ratios) and the exact sign-flip test over
runs (:mod:`dynamics.analysis.inference`). Layer counts are kept as description only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..schema import SHARED
from .cleaning import phase_labels, view_order, with_run
from .derived import loss_share
from .imbalance import matched_pairs, per_run_layer_ratio, view_dynamics, view_pairs
from .inference import INTERVAL, sign_flip_test, t_interval

__all__ = ["run_summary", "mean_ci", "run_groups", "matched_layer_means", "pair_runs", "view_shares",
           "imbalance_summary"]


def run_summary(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                n_phases: int = 3, vd: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run, phase (``early``/``middle``/``late`` and ``all``) and view: mean gradient norm, mean
    update norm, mean learning speed, loss reduction -sum(lca) and its share of all views' reduction
    (NaN when the total did not decrease). ``vd``: :func:`view_dynamics` of the same tables when the caller
    has it already (it is not recomputed)."""
    if vd is None:
        vd = view_dynamics(per_param, per_step, n_phases=n_phases)
    parts = [vd, vd.assign(phase="all")]
    both = pd.concat([p.assign(phase=p["phase"].astype(str)) for p in parts], ignore_index=True)
    g = both.groupby(["run", "phase", "view"], observed=True)
    out = g.agg(condition=("condition", "first"), seed=("seed", "first"), grad_norm=("grad_norm", "mean"),
                update_norm=("update_norm", "mean"), learning_speed=("learning_speed", "mean"),
                lca=("lca", "sum"), n_steps=("step", "size")).reset_index()
    out["loss_reduction"] = -out["lca"]
    out["share"] = loss_share(out["lca"], out.groupby(["run", "phase"], observed=True)["lca"].transform("sum"))
    order = phase_labels(n_phases) + ["all"]
    out["phase"] = pd.Categorical(out["phase"], categories=order)
    out["view"] = pd.Categorical(out["view"].astype(str), categories=view_order(per_param))
    return out.drop(columns="lca").sort_values(["run", "phase", "view"]).reset_index(drop=True)


def mean_ci(values: np.ndarray, *, level: float = 0.95, log: bool = False,
            scale: str = "linear") -> tuple[float, float, float]:
    """Mean over runs (geometric when ``log``; see ``scale`` of :func:`dynamics.analysis.inference.t_interval`)
    of the usable values with its Student-t interval; NaN interval below three runs, all NaN with none."""
    return t_interval(values, level, log=log, scale=scale)


def _values(x) -> str:
    """Per-run values as a short string (what the report shows where n is too small for an interval)."""
    return ", ".join(f"{v:.4g}" for v in np.asarray(x, float) if np.isfinite(v))


def run_groups(per_param: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """One row per run: ``run`` and its ``group`` (the value of ``by``; the run itself when None), in the
    order the runs appear. A run with two values of ``by`` is an error naming it."""
    df = with_run(per_param)
    if by is not None and by not in df.columns:
        raise ValueError(f"cannot group by {by!r}: no such column in per_param (columns: {list(df.columns)})")
    df = df[list(dict.fromkeys(["run", by or "run"]))].drop_duplicates()  # a row per run (two: two groups)
    group = df["run"].astype(str) if by is None else df[by].astype(str)
    groups = pd.DataFrame({"run": df["run"].astype(str), "group": group}).drop_duplicates()
    if groups["run"].duplicated().any():
        bad = groups.loc[groups["run"].duplicated(), "run"].iloc[0]
        raise ValueError(f"run {bad!r} has more than one value of {by!r}")
    return groups.reset_index(drop=True)


def matched_layer_means(matched: pd.DataFrame) -> pd.DataFrame:
    """Per pair of views, phase (and ``all``), run and matched depth: ``a`` and ``b`` averaged over the phase's
    steps. ``matched``: :func:`dynamics.analysis.matched_pairs`; its ``attrs`` are kept."""
    md = matched.assign(run=matched["run"].astype(str), phase=matched["phase"].astype(str))
    md = pd.concat([md, md.assign(phase="all")], ignore_index=True)
    keys = ["view_a", "view_b", "phase", "run", "depth"]
    out = md.groupby(keys, observed=True, sort=False)[["a", "b"]].mean().reset_index()
    out.attrs.update(matched.attrs)
    return out


def pair_runs(rs: pd.DataFrame, matched: pd.DataFrame | None = None, *,
              layers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run, phase and pair of views: ``grad_ratio`` (ratio of the views' mean gradient norms), and over
    the matched layers ``log_ratio`` (mean over layers of ln(a/b), each layer's a and b averaged over the
    phase's steps), ``n_layers`` and ``n_a_greater``. ``rs``: :func:`run_summary`; ``matched``:
    :func:`dynamics.analysis.matched_pairs` of the same tables, or ``layers``: its :func:`matched_layer_means`
    (e.g. :func:`dynamics.analysis.sweep.matched_layer_means` of runs reduced one at a time)."""
    gn = rs.assign(run=rs["run"].astype(str), phase=rs["phase"].astype(str), view=rs["view"].astype(str))
    gn = gn.set_index(["run", "phase", "view"])["grad_norm"]
    layers = matched_layer_means(matched) if layers is None else layers
    rows = []
    for (a, b, phase), sub in layers.groupby(["view_a", "view_b", "phase"], sort=False):
        per_run = per_run_layer_ratio(sub)
        for r in per_run.itertuples(index=False):
            ga, gb = gn.get((r.run, phase, a), np.nan), gn.get((r.run, phase, b), np.nan)
            rows.append({"run": r.run, "phase": phase, "view_a": a, "view_b": b, "grad_ratio": ga / gb,
                         "log_ratio": r.log_ratio, "n_layers": int(r.n_layers), "n_a_greater": int(r.n_a_greater)})
    return pd.DataFrame(rows, columns=["run", "phase", "view_a", "view_b", "grad_ratio", "log_ratio", "n_layers",
                                       "n_a_greater"])


def _share_row(sub: pd.DataFrame, view: str, level: float, nonshared: list[str]) -> dict:
    """Across the runs of one group and phase: one view's share of the loss reduction."""
    wide = sub.pivot_table(index="run", columns="view", values="share", observed=True, dropna=False)
    mine = wide[view] if view in wide.columns else pd.Series(dtype=float)
    est, lo, hi = t_interval(mine.to_numpy(float), level)
    rival = wide[[v for v in nonshared if v in wide.columns]]
    largest = rival.idxmax(axis=1, skipna=True) if rival.notna().any().any() else pd.Series(dtype=object)
    return {"view": view, "n_runs": int(mine.notna().sum()), "share": est, "share_lo": lo, "share_hi": hi,
            "n_largest": int((largest == view).sum()), "interval": INTERVAL, "share_values": _values(mine)}


def view_shares(rs: pd.DataFrame, groups: pd.DataFrame, *, shared: str = SHARED, level: float = 0.95,
                order: Sequence[str] | None = None, n_phases: int = 3) -> pd.DataFrame:
    """Per group, phase and view (every view, ``shared`` included): the mean share of the loss reduction over
    runs with its Student-t interval, and ``n_largest``, the runs in which the view (``shared`` excluded) had
    the largest share. ``rs``: :func:`run_summary`; ``groups``: :func:`run_groups`."""
    rs = rs.assign(run=rs["run"].astype(str)).merge(groups, on="run")
    views = [str(v) for v in rs["view"].cat.categories if v in set(rs["view"].astype(str))]
    nonshared = [v for v in views if v != shared]
    rows = []
    for (group, phase), sub in rs.groupby(["group", "phase"], observed=True, sort=False):
        rows += [{"group": group, "phase": str(phase), "_v": k, **_share_row(sub, v, level, nonshared)}
                 for k, v in enumerate(views) if (sub["view"].astype(str) == v).any()]
    return _ordered(pd.DataFrame(rows), _group_order(groups, order), n_phases, "_v")


def _ordered(out: pd.DataFrame, group_order: Sequence[str], n_phases: int, key: str | None = None) -> pd.DataFrame:
    """Rows sorted by group (in ``group_order``), phase (early to late, then ``all``), then the integer column
    ``key`` (dropped afterwards); ``phase`` categorical."""
    if out.empty:
        return out
    phases = phase_labels(n_phases) + ["all"]
    out = out.assign(_g=out["group"].map({g: i for i, g in enumerate(group_order)}),
                     _p=out["phase"].astype(str).map({p: i for i, p in enumerate(phases)}))
    out = out.sort_values(["_g", "_p"] + ([key] if key else []), kind="stable")
    out = out.drop(columns=["_g", "_p"] + ([key] if key else [])).reset_index(drop=True)
    out["phase"] = pd.Categorical(out["phase"].astype(str), categories=phases)
    return out


def _group_order(groups: pd.DataFrame, order: Sequence[str] | None) -> list[str]:
    """``order`` (checked against the groups), else the groups in the order their runs appear."""
    present = list(dict.fromkeys(groups["group"]))
    if order is None:
        return present
    order = [str(g) for g in order]
    missing = [g for g in present if g not in order]
    return order + missing


def _leads(a: str, b: str, ratio: tuple[float, float, float]) -> str:
    """Which of the pair leads: ``a`` when the interval of its ratio to ``b`` lies above 1, ``b`` when below,
    ``neither`` when it holds 1 or no interval can be given."""
    _, lo, hi = ratio
    if np.isfinite(lo) and lo > 1:
        return a
    if np.isfinite(hi) and hi < 1:
        return b
    return "neither"


def _pair_row(sub: pd.DataFrame, shares_of: dict[str, tuple], level: float) -> dict:
    """Across the runs of one group, phase and pair: ratio intervals and the exact sign-flip test."""
    ratio = t_interval(sub["grad_ratio"].to_numpy(float), level, log=True)
    layer = t_interval(np.exp(sub["log_ratio"].to_numpy(float)), level, log=True)
    test = sign_flip_test(sub["log_ratio"].to_numpy(float))
    a, b = sub["view_a"].iloc[0], sub["view_b"].iloc[0]
    sa, sb = shares_of.get(a, (np.nan,) * 3), shares_of.get(b, (np.nan,) * 3)
    basis = layer if np.isfinite(layer[0]) else ratio
    return {"n_runs": int(sub["run"].nunique()), "leads": _leads(a, b, basis), "grad_ratio": ratio[0],
            "grad_ratio_lo": ratio[1],
            "grad_ratio_hi": ratio[2], "share_a": sa[0], "share_a_lo": sa[1], "share_a_hi": sa[2],
            "share_b": sb[0], "share_b_lo": sb[1], "share_b_hi": sb[2], "layer_ratio": layer[0],
            "layer_ratio_lo": layer[1], "layer_ratio_hi": layer[2], "n_test_runs": test["n"], "p": test["p"],
            "p_min": test["p_min"], "n_pairs": int(sub["n_layers"].sum()),
            "n_a_greater": int(sub["n_a_greater"].sum()), "interval": INTERVAL, "test": "exact sign-flip over runs",
            "grad_ratio_values": _values(sub["grad_ratio"]), "layer_ratio_values": _values(np.exp(sub["log_ratio"]))}


def imbalance_summary(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                      by: str | None = "condition", views: Sequence[str] | None = None,
                      shared: str = SHARED, n_phases: int = 3, level: float = 0.95,
                      order: Sequence[str] | None = None, vd: pd.DataFrame | None = None,
                      md: pd.DataFrame | None = None, layers: pd.DataFrame | None = None,
                      rs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The key table: one row per group (``by``; ``None`` = per run), phase and pair of views (every pair of
    :func:`dynamics.analysis.view_pairs`), the run as the unit of every statistic.

    Columns: ``group``, ``phase``, ``view_a``, ``view_b``, ``n_runs``, ``leads`` (which of the two views leads:
    ``view_a`` when the interval of the matched-layer ratio A/B lies above 1, ``view_b`` when below, else
    ``neither``; by the ratio of mean norms where no layers match), ``grad_ratio`` (geometric
    mean over runs of each run's ratio of A's and B's mean gradient norms) with ``grad_ratio_lo``/``_hi``,
    ``share_a``/``share_b`` with intervals, ``layer_ratio`` (geometric mean over runs of each run's
    geometric-mean ratio over matched layers) with its interval, ``p`` (exact sign-flip test over runs of the
    per-run mean log ratio; NaN below three runs) with ``p_min`` (the smallest p the number of runs allows),
    ``n_pairs`` and ``n_a_greater`` (matched layers x runs: description only), ``interval`` and ``test`` (the
    methods), ``grad_ratio_values`` and ``layer_ratio_values`` (the per-run values, shown where n < 3).
    Intervals: Student t over runs at ``level`` (NaN below three runs). Groups in ``order`` (default: as the
    runs appear). ``vd``/``md``/``rs``: :func:`view_dynamics` / :func:`dynamics.analysis.matched_pairs` /
    :func:`run_summary` of the same tables when the caller has them (``layers``: their
    :func:`matched_layer_means` instead of ``md``).
    """
    groups = run_groups(per_param, by)
    pairs = view_pairs(per_param, views, shared)
    rs = run_summary(per_param, per_step, n_phases=n_phases, vd=vd) if rs is None else rs
    if layers is None and md is None:
        md = matched_pairs(per_param, per_step, views=views, shared=shared, n_phases=n_phases)
    elif layers is None and "view_a" not in md.columns:  # one pair's matched_depth table
        md = md.assign(view_a=md.attrs.get("view_a"), view_b=md.attrs.get("view_b"))
    layers = matched_layer_means(md) if layers is None else layers
    pr = pair_runs(rs, layers=layers).merge(groups, on="run")
    shares = view_shares(rs, groups, shared=shared, level=level, order=order, n_phases=n_phases)
    rs = rs.assign(run=rs["run"].astype(str)).merge(groups, on="run")
    rows = []
    for (group, phase), sub in rs.groupby(["group", "phase"], observed=True, sort=False):
        s = shares[(shares["group"] == group) & (shares["phase"].astype(str) == str(phase))]
        shares_of = {r.view: (r.share, r.share_lo, r.share_hi) for r in s.itertuples(index=False)}
        for a, b in pairs:
            p = pr[(pr["group"] == group) & (pr["phase"] == str(phase)) & (pr["view_a"] == a) & (pr["view_b"] == b)]
            if p.empty:
                continue
            rows.append({"group": group, "phase": str(phase), "view_a": a, "view_b": b,
                         "_k": pairs.index((a, b)), **_pair_row(p, shares_of, level)})
    out = _ordered(pd.DataFrame(rows), _group_order(groups, order), n_phases, "_k")
    out.attrs.update(by=by, level=level, pairs=pairs, unmatched=layers.attrs.get("unmatched", {}))
    return out
