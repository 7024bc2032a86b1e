"""Imbalance analysis: pure functions on the tidy tables that :func:`dynamics.load` returns.

Every function takes ``per_param`` (one row per recorded step x parameter tensor, columns ``step``,
``view``, ``layer``, ``depth``, ``grad_sq``, ``param_sq``, ``update_sq``, ``lca`` and optionally
``run``/``condition``/``seed``/``finite``/``has_grad``) and optionally ``per_step`` (``step``,
``skipped``, ...), and returns a new DataFrame. Only the stored additive sums are aggregated; norms,
ratios and shares are derived after summing, so they are exact for any grouping.

Exclusions (:func:`clean`), applied by every function:

* steps the optimizer skipped (``per_step.skipped``, e.g. AMP overflow), for all views of that run;
* steps in which any tensor's gradient is non-finite, for all views of that run, so views are
  always compared on the same steps;
* rows without a gradient (``has_grad`` false: frozen or unused tensors);
* a non-finite ``update_sq`` or ``lca`` (e.g. the last step, whose update is unknown) is treated as
  missing for that quantity only.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd

from ..schema import QUANTITIES, SHARED
from .cleaning import check_columns, clean, view_order
from .derived import from_sums, loss_share, mean_layer_norm
from .inference import sign_flip_test, t_interval

def _run_info(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("run", observed=True)[["condition", "seed"]].first().reset_index()


_VIEW_STEP = ["run", "view", "step"]


def view_dynamics(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                  n_phases: int = 3, cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run, view and step: norms, learning speed, loss-change allocation and loss-reduction share.

    Columns: ``grad_norm`` = sqrt(sum ||g||^2), ``layer_grad_norm`` = mean over the view's layers of
    each layer's gradient norm, ``update_norm``, ``param_norm``, ``learning_speed`` = sum ||g||^2 /
    sum ||theta||^2, ``lca`` = sum g.dtheta, ``cum_lca`` (cumulative over recorded steps),
    ``loss_reduction`` = -cum_lca, ``share`` = the view's part of the cumulative loss reduction of
    all views (``shared`` included), NaN while the total has not decreased, ``step_share`` the same
    for the step alone.

    ``cleaned``: ``clean(per_param, per_step, n_phases=n_phases)`` when the caller has it already.
    Every group, the shared one included, is treated alike.
    """
    df = clean(per_param, per_step, n_phases=n_phases) if cleaned is None else cleaned
    sums = df.groupby(_VIEW_STEP, observed=True, sort=True)[list(QUANTITIES)].sum(min_count=1)
    layer = df.groupby(["run", "view", "layer", "step"], observed=True)["grad_sq"].sum()
    sums["layer_grad_norm"] = mean_layer_norm(layer, _VIEW_STEP).reindex(sums.index)
    return _dynamics(sums, df)


def view_dynamics_from_sums(sums: pd.DataFrame) -> pd.DataFrame:
    """:func:`view_dynamics` from sums already taken over the usable rows: one row per run, view and step with
    ``run``, ``view``, ``step``, ``phase``, ``condition``, ``seed``, the sums of the stored quantities and
    ``layer_grad_norm`` (the used rows of :attr:`dynamics.analysis.sweep.Sweep.views`)."""
    return _dynamics(sums.set_index(_VIEW_STEP).sort_index()[[*QUANTITIES, "layer_grad_norm"]], sums)


def _dynamics(sums: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The view dynamics from per (run, view, step) sums (sorted index) and the rows they were taken over."""
    derived = from_sums(sums)
    out = pd.DataFrame({"grad_norm": derived.pop("grad_norm"), "layer_grad_norm": sums["layer_grad_norm"],
                        **derived})
    out["cum_lca"] = out["lca"].fillna(0.0).groupby(level=["run", "view"], observed=True).cumsum()
    out["loss_reduction"] = -out["cum_lca"]
    out = out.reset_index()
    total_cum = out.groupby(["run", "step"], observed=True)["cum_lca"].transform("sum")
    total_step = out.groupby(["run", "step"], observed=True)["lca"].transform("sum")
    out["share"] = loss_share(out["cum_lca"], total_cum)
    out["step_share"] = loss_share(out["lca"], total_step)
    phase = df.drop_duplicates(["run", "step"])[["run", "step", "phase"]]
    out = out.merge(phase, on=["run", "step"], how="left").merge(_run_info(df), on="run", how="left")
    out["view"] = pd.Categorical(out["view"].astype(str), categories=view_order(df))
    return out


def layer_dynamics(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                   n_phases: int = 3, cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run, view, depth and step: the layer's gradient/update/parameter norms, speed and lca
    (``cleaned``: as in :func:`view_dynamics`)."""
    df = clean(per_param, per_step, n_phases=n_phases) if cleaned is None else cleaned
    keys = ["run", "view", "depth", "step"]
    sums = df.groupby(keys, observed=True, sort=True)[list(QUANTITIES)].sum(min_count=1)
    layers = df.groupby(["run", "view", "depth"], observed=True)["layer"].first()
    out = pd.DataFrame(from_sums(sums)).reset_index()
    out = out.merge(layers.astype(str).reset_index(), on=["run", "view", "depth"], how="left")
    phase = df.drop_duplicates(["run", "step"])[["run", "step", "phase"]]
    return out.merge(phase, on=["run", "step"], how="left").merge(_run_info(df), on="run", how="left")


# --------------------------------------------------------------------------- matched depth

def _views_of_every_run(per_param: pd.DataFrame) -> list[str]:
    """The views recorded in every run of the table, in declared order (runs with other view sets are
    compared only on the views they share)."""
    order = view_order(per_param)
    if "run" not in per_param.columns:
        return order
    pairs = per_param[["run", "view"]].drop_duplicates()  # one row per run and view: a set per run is cheap
    present = pairs.groupby("run", observed=True)["view"].agg(lambda v: set(v.astype(str)))
    common = set.intersection(*present.tolist()) if len(present) else set()
    return [v for v in order if v in common]


def view_pairs(per_param: pd.DataFrame, views: Sequence[str] | None = None,
               shared: str = SHARED) -> list[tuple[str, str]]:
    """The pairs of views the analysis compares: every pair of ``views`` (in the order given), default every
    pair of the views besides ``shared`` that all runs recorded, in declared order. Errors name the view."""
    order = view_order(per_param)
    if views is None:
        candidates = [v for v in _views_of_every_run(per_param) if v != shared]
        if len(candidates) < 2:
            raise ValueError(f"need two views besides {shared!r} recorded in every run to compare; found {order}")
        return list(itertools.combinations(candidates, 2))
    views = [str(v) for v in views]
    if len(views) < 2:
        raise ValueError(f"views must name at least two views, got {views}")
    for v in views:
        if v not in order:
            raise ValueError(f"view {v!r} not in the table; views are {order}")
    if len(set(views)) != len(views):
        raise ValueError(f"views must differ, got {views}")
    return list(itertools.combinations(views, 2))


def _pair(per_param: pd.DataFrame, views: Sequence[str] | None, shared: str) -> tuple[str, str]:
    """One pair: the two views given, or the first pair of :func:`view_pairs`."""
    if views is not None and len(views) != 2:
        raise ValueError(f"views must name exactly two views, got {list(views)}")
    return view_pairs(per_param, views, shared)[0]


_MATCH_QUANTITIES = ("grad_norm", "update_norm", "learning_speed")


def _match(ld: pd.DataFrame, a: str, b: str, quantity: str) -> pd.DataFrame:
    """Depth i of view ``a`` against depth i of ``b`` in a layer-dynamics table, at every step of every run."""
    cols = ["run", "depth", "step"]
    view = ld["view"].astype(str)
    left = ld[view == a][cols + ["phase", "condition", "seed", quantity]].rename(columns={quantity: "a"})
    right = ld[view == b][cols + [quantity]].rename(columns={quantity: "b"})
    out = left.merge(right, on=cols, how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["a"] / out["b"]
        out["log2_ratio"] = np.log2(out["ratio"])
    out.attrs.update(view_a=a, view_b=b, quantity=quantity,
                     unmatched=sorted(set(ld.loc[view == a, "depth"]) ^ set(ld.loc[view == b, "depth"])))
    return out.sort_values(cols).reset_index(drop=True)


def matched_depth(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                  views: Sequence[str] | None = None, quantity: str = "grad_norm",
                  shared: str = SHARED, n_phases: int = 3, cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Layer ``depth`` of view A against the same depth of view B, at every step.

    Returns per run, depth and step: ``a``, ``b`` (the quantity for each view), ``ratio`` = a/b and
    ``log2_ratio``; ``attrs`` holds ``view_a``, ``view_b``, ``quantity`` and the depths that exist in
    only one of the views (``unmatched``). Views default to the first two besides ``shared``.
    ``cleaned``: as in :func:`view_dynamics`. :func:`matched_pairs` does every pair at once.
    """
    if quantity not in _MATCH_QUANTITIES:
        raise ValueError(f"quantity must be one of {_MATCH_QUANTITIES}, got {quantity!r}")
    a, b = _pair(per_param, views, shared)
    return _match(layer_dynamics(per_param, per_step, n_phases=n_phases, cleaned=cleaned), a, b, quantity)


def matched_pairs(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                  views: Sequence[str] | None = None, quantity: str = "grad_norm", shared: str = SHARED,
                  n_phases: int = 3, cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`matched_depth` for every pair of :func:`view_pairs`, stacked, with ``view_a`` and ``view_b``
    columns (the layer dynamics are computed once). ``attrs``: ``pairs``, ``quantity`` and ``unmatched``
    (``"a/b"`` -> depths in only one of the two views)."""
    if quantity not in _MATCH_QUANTITIES:
        raise ValueError(f"quantity must be one of {_MATCH_QUANTITIES}, got {quantity!r}")
    pairs = view_pairs(per_param, views, shared)
    ld = layer_dynamics(per_param, per_step, n_phases=n_phases, cleaned=cleaned)
    parts = [_match(ld, a, b, quantity) for a, b in pairs]
    out = pd.concat([p.assign(view_a=a, view_b=b) for p, (a, b) in zip(parts, pairs)], ignore_index=True)
    out.attrs.update(pairs=pairs, quantity=quantity,
                     unmatched={f"{a}/{b}": p.attrs["unmatched"] for p, (a, b) in zip(parts, pairs)})
    return out


def _per_layer(md: pd.DataFrame, phase: str | None) -> "pd.core.groupby.DataFrameGroupBy":
    """Rows of a matched-depth table in ``phase`` (None or ``"all"``: every row), grouped by run and depth."""
    if phase is not None and phase != "all":
        md = md[md["phase"].astype(str) == phase]
    return md.groupby(["run", "depth"], observed=True)


def matched_layers(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                   views: Sequence[str] | None = None, quantity: str = "grad_norm", phase: str | None = None,
                   shared: str = SHARED, n_phases: int = 3) -> pd.DataFrame:
    """Per run and matched depth: mean of the quantity over steps for A and B, their ratio, and the
    fraction of steps in which A exceeded B; optionally within one training ``phase``."""
    md = matched_depth(per_param, per_step, views=views, quantity=quantity, shared=shared, n_phases=n_phases)
    if phase is not None and phase != "all" and phase not in set(md["phase"].astype(str)):
        raise ValueError(f"phase {phase!r} not found; phases are {sorted(set(md['phase'].astype(str)))}")
    g = _per_layer(md.assign(a_gt_b=md["a"] > md["b"]), phase)
    out = g.agg(condition=("condition", "first"), seed=("seed", "first"), a=("a", "mean"), b=("b", "mean"),
                frac_steps_a_gt_b=("a_gt_b", "mean"), n_steps=("step", "size")).reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["a"] / out["b"]
    out.attrs.update(md.attrs)
    return out


def per_run_layer_ratio(matched: pd.DataFrame) -> pd.DataFrame:
    """Per run: the mean over matched layers of ln(a/b) (``log_ratio``), with the layer counts ``n_layers``
    and ``n_a_greater`` (layers where a > b; description, not replicates). ``matched``: one row per run and
    layer with columns ``a`` and ``b`` (e.g. :func:`matched_layers`); without ``run``, one run."""
    check_columns(matched, ["a", "b"], "matched table")
    m = matched if "run" in matched.columns else matched.assign(run="run")
    a, b = m["a"].to_numpy(float), m["b"].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    d = pd.DataFrame({"run": m["run"].astype(str).to_numpy()[ok], "d": np.log(a[ok]) - np.log(b[ok])})
    g = d.groupby("run", sort=False)["d"]
    return pd.DataFrame({"log_ratio": g.mean(), "n_layers": g.size(),
                         "n_a_greater": g.agg(lambda x: int((x > 0).sum()))}).reset_index()


def paired_test(matched: pd.DataFrame, *, level: float = 0.95) -> dict:
    """Is A's quantity larger than B's, layer by layer? Tested with the run as the unit.

    ``matched``: one row per run and matched layer (columns ``a``, ``b``, optionally ``run``). Each run is
    summarised first by its mean log ratio over layers (:func:`per_run_layer_ratio`); across runs: the
    geometric-mean ratio ``geo_mean_ratio`` with its Student-t interval ``lo``..``hi`` (the effect size), and
    the exact sign-flip test ``p`` with ``p_min``, the smallest p the number of runs allows (0.25 at 3 runs).
    ``n_pairs``, ``n_a_greater`` and ``fraction`` count layers x runs: description, never the n of the test.
    """
    per_run = per_run_layer_ratio(matched)
    n_pairs, n_greater = int(per_run["n_layers"].sum()), int(per_run["n_a_greater"].sum())
    est, lo, hi = t_interval(np.exp(per_run["log_ratio"].to_numpy(float)), level, log=True)
    test = sign_flip_test(per_run["log_ratio"].to_numpy(float))
    return {"n_runs": int(len(per_run)), "n_pairs": n_pairs, "n_a_greater": n_greater,
            "fraction": n_greater / n_pairs if n_pairs else float("nan"), "geo_mean_ratio": est, "lo": lo,
            "hi": hi, "p": test["p"], "p_min": test["p_min"], "test": "exact sign-flip over runs"}


# --------------------------------------------------------------------------- conditional learning speed

def conditional_learning_speed(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                               views: Sequence[str] | None = None, window: int | None = None,
                               shared: str = SHARED, n_phases: int = 3,
                               vd: pd.DataFrame | None = None) -> pd.DataFrame:
    """Conditional learning speed of view A relative to view B over training (Wu et al., ICML 2022).

    A branch's learning speed at a step is mu = sum ||g||^2 / sum ||theta||^2 over the branch's tensors
    (sums first, as in the authors' implementation), accumulated over the recorded steps up to t (or the
    last ``window`` recorded steps): S_a, S_b. ``speed = log(S_a / S_b)`` (natural log; the authors' code
    uses log10), positive when A's branch learns faster. In the paper each branch's speed is taken relative
    to the fusion parameters it feeds; with one fusion head shared by both branches (late fusion) that
    reference cancels from the difference of the two conditional speeds, which is this column.
    Per run and step: ``s_a``, ``s_b``, ``speed``. ``vd``: :func:`view_dynamics` of the same tables when the
    caller has it already (it is not recomputed).
    """
    a, b = _pair(per_param, views, shared)
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of recorded steps, got {window}")
    if vd is None:
        vd = view_dynamics(per_param, per_step, n_phases=n_phases)
    vd = vd[vd["view"].astype(str).isin([a, b])]
    mu = vd.pivot_table(index=["run", "step"], columns="view", values="learning_speed", observed=True)
    mu = mu.reindex(columns=[a, b]).astype(float)
    if window is None:
        acc = mu.groupby(level="run", observed=True).cumsum()
    else:
        acc = mu.groupby(level="run", observed=True).transform(lambda s: s.rolling(window, min_periods=1).sum())
    out = pd.DataFrame({"s_a": acc[a], "s_b": acc[b]})
    with np.errstate(divide="ignore", invalid="ignore"):
        out["speed"] = np.log(out["s_a"] / out["s_b"])
    out = out.reset_index()
    info = vd.drop_duplicates(["run", "step"])[["run", "step", "phase", "condition", "seed"]]
    out = out.merge(info, on=["run", "step"], how="left")
    out.attrs.update(view_a=a, view_b=b, window=window)
    return out
