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

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..schema import QUANTITIES, SHARED
from .cleaning import check_columns, clean, phase_labels, view_order, with_run
from .derived import from_sums, loss_share, mean_layer_norm
from .metrics import average_ranks, bootstrap_ci

def _run_info(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("run", observed=True)[["condition", "seed"]].first().reset_index()


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
    keys = ["run", "view", "step"]
    sums = df.groupby(keys, observed=True, sort=True)[list(QUANTITIES)].sum(min_count=1)
    layer = df.groupby(["run", "view", "layer", "step"], observed=True)["grad_sq"].sum()
    layer_mean = mean_layer_norm(layer, ["run", "view", "step"])
    derived = from_sums(sums)
    out = pd.DataFrame({"grad_norm": derived.pop("grad_norm"), "layer_grad_norm": layer_mean.reindex(sums.index),
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

def _pair(per_param: pd.DataFrame, views: Sequence[str] | None, shared: str) -> tuple[str, str]:
    order = view_order(per_param)
    if views is None:
        candidates = [v for v in order if v != shared]
        if len(candidates) < 2:
            raise ValueError(f"need two views besides {shared!r} to compare; found {order}")
        return candidates[0], candidates[1]
    if len(views) != 2:
        raise ValueError(f"views must name exactly two views, got {list(views)}")
    for v in views:
        if v not in order:
            raise ValueError(f"view {v!r} not in the table; views are {order}")
    if views[0] == views[1]:
        raise ValueError(f"views must differ, got {list(views)}")
    return str(views[0]), str(views[1])


_MATCH_QUANTITIES = ("grad_norm", "update_norm", "learning_speed")


def matched_depth(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                  views: Sequence[str] | None = None, quantity: str = "grad_norm",
                  shared: str = SHARED, n_phases: int = 3, cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Layer ``depth`` of view A against the same depth of view B, at every step.

    Returns per run, depth and step: ``a``, ``b`` (the quantity for each view), ``ratio`` = a/b and
    ``log2_ratio``; ``attrs`` holds ``view_a``, ``view_b``, ``quantity`` and the depths that exist in
    only one of the views (``unmatched``). Views default to the first two besides ``shared``.
    ``cleaned``: as in :func:`view_dynamics`.
    """
    if quantity not in _MATCH_QUANTITIES:
        raise ValueError(f"quantity must be one of {_MATCH_QUANTITIES}, got {quantity!r}")
    a, b = _pair(per_param, views, shared)
    ld = layer_dynamics(per_param, per_step, n_phases=n_phases, cleaned=cleaned)
    ld = ld[ld["view"].astype(str).isin([a, b])]
    cols = ["run", "depth", "step"]
    left = ld[ld["view"].astype(str) == a][cols + ["phase", "condition", "seed", quantity]].rename(columns={quantity: "a"})
    right = ld[ld["view"].astype(str) == b][cols + [quantity]].rename(columns={quantity: "b"})
    out = left.merge(right, on=cols, how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["a"] / out["b"]
        out["log2_ratio"] = np.log2(out["ratio"])
    da = set(ld.loc[ld["view"].astype(str) == a, "depth"])
    db = set(ld.loc[ld["view"].astype(str) == b, "depth"])
    out.attrs.update(view_a=a, view_b=b, quantity=quantity, unmatched=sorted(da ^ db))
    return out.sort_values(cols).reset_index(drop=True)


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


def paired_test(matched: pd.DataFrame) -> dict:
    """Wilcoxon signed-rank test of log(a/b) = 0 across the rows (matched layers x runs).

    Returns ``n_pairs``, ``n_a_greater``, ``fraction`` (of pairs with a > b), ``geo_mean_ratio``,
    ``statistic`` and ``p`` (scipy.stats.wilcoxon, two-sided; NaN with fewer than two non-zero
    differences) and ``effect_size``: the matched-pairs rank-biserial correlation
    (W+ - W-)/(W+ + W-), from +1 (a > b in every pair) to -1.
    """
    check_columns(matched, ["a", "b"], "matched table")
    a = matched["a"].to_numpy(float)
    b = matched["b"].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    d = np.log(a[ok]) - np.log(b[ok])
    res = {"n_pairs": int(d.size), "n_a_greater": int((d > 0).sum()),
           "fraction": float((d > 0).mean()) if d.size else float("nan"),
           "geo_mean_ratio": float(np.exp(d.mean())) if d.size else float("nan"),
           "statistic": float("nan"), "p": float("nan"), "effect_size": float("nan")}
    nz = d[d != 0]
    if nz.size:
        r = average_ranks(np.abs(nz))
        w_plus, w_minus = r[nz > 0].sum(), r[nz < 0].sum()
        res["effect_size"] = float((w_plus - w_minus) / (w_plus + w_minus))
    if nz.size >= 2:
        w = stats.wilcoxon(nz)
        res["statistic"], res["p"] = float(w.statistic), float(w.pvalue)
    return res


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


# --------------------------------------------------------------------------- summaries

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


def mean_ci(values: np.ndarray, *, n_boot: int, level: float, seed: int, log: bool = False) -> tuple[float, float, float]:
    """Mean (geometric when ``log``) of the finite (and, with ``log``, positive) values over runs with a
    percentile bootstrap interval; NaN interval below two runs (as ``bootstrap_ci`` gives), all NaN with none."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    x = np.log(v) if log else v
    est, lo, hi = bootstrap_ci(np.mean, x, n_boot=n_boot, level=level, seed=seed)
    return (float(np.exp(est)), float(np.exp(lo)), float(np.exp(hi))) if log else (est, lo, hi)


def _group_column(df: pd.DataFrame, by: str | None) -> pd.Series:
    if by is None:
        return df["run"].astype(str)
    if by not in df.columns:
        raise ValueError(f"cannot group by {by!r}: no such column in per_param (columns: {list(df.columns)})")
    return df[by].astype(str)


def imbalance_summary(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
                      by: str | None = "condition", views: Sequence[str] | None = None,
                      shared: str = SHARED, n_phases: int = 3, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0, vd: pd.DataFrame | None = None,
                      md: pd.DataFrame | None = None) -> pd.DataFrame:
    """The key table: one row per group (``by``; ``None`` = per run) and phase.

    Columns: ``group``, ``phase``, ``n_runs``, ``view_a``, ``view_b``, ``dominant`` (view, ``shared``
    excluded, with the largest mean loss-reduction share; by gradient norm when no loss decrease was
    recorded), ``grad_ratio`` (geometric mean over runs of A's over B's mean gradient norm) with
    ``grad_ratio_lo``/``grad_ratio_hi``, ``share_a``/``share_b`` (mean loss-reduction share) with
    intervals, and the matched-depth test pooled over layers and runs: ``n_pairs``,
    ``n_a_greater``, ``p``, ``effect_size``. Intervals are percentile bootstraps over runs (seeds)
    at ``level``; with a single run they are NaN because no interval can be given.

    ``vd`` (:func:`view_dynamics`) and ``md`` (:func:`matched_depth` of the compared views) of the same tables
    and ``n_phases``, when the caller has them already, are used instead of being recomputed.
    """
    a, b = _pair(per_param, views, shared)
    df = with_run(per_param)
    groups = pd.DataFrame({"run": df["run"].astype(str), "group": _group_column(df, by)}).drop_duplicates()
    if groups["run"].duplicated().any():
        bad = groups.loc[groups["run"].duplicated(), "run"].iloc[0]
        raise ValueError(f"run {bad!r} has more than one value of {by!r}")
    rs = run_summary(per_param, per_step, n_phases=n_phases, vd=vd)
    rs = rs.assign(run=rs["run"].astype(str)).merge(groups, on="run")
    if md is None:
        md = matched_depth(per_param, per_step, views=(a, b), shared=shared, n_phases=n_phases)
    elif (md.attrs.get("view_a"), md.attrs.get("view_b")) != (a, b):
        raise ValueError(f"md compares {md.attrs.get('view_a')!r} with {md.attrs.get('view_b')!r}, "
                         f"not the views {a!r} and {b!r} of this summary")
    md = md.assign(run=md["run"].astype(str)).merge(groups, on="run")
    nonshared = [v for v in view_order(per_param) if v != shared]
    rows = []
    for (group, phase), sub in rs.groupby(["group", "phase"], observed=True, sort=True):
        wide = sub.pivot_table(index="run", columns="view", values=["grad_norm", "share"], observed=True,
                               dropna=False)
        ga = wide["grad_norm"].get(a, pd.Series(dtype=float))
        gb = wide["grad_norm"].get(b, pd.Series(dtype=float))
        ratio = mean_ci((ga / gb).to_numpy(), n_boot=n_boot, level=level, seed=seed, log=True)
        sa = mean_ci(wide["share"].get(a, pd.Series(dtype=float)).to_numpy(), n_boot=n_boot, level=level, seed=seed)
        sb = mean_ci(wide["share"].get(b, pd.Series(dtype=float)).to_numpy(), n_boot=n_boot, level=level, seed=seed)
        mean_share = sub[sub["view"].astype(str).isin(nonshared)].groupby("view", observed=True)["share"].mean()
        if mean_share.notna().any():
            dominant = str(mean_share.idxmax())
        else:
            dominant = str(sub[sub["view"].astype(str).isin(nonshared)].groupby("view", observed=True)[
                "grad_norm"].mean().idxmax())
        test = paired_test(_per_layer(md[md["group"] == group], phase)[["a", "b"]].mean())
        rows.append({"group": group, "phase": phase, "n_runs": int(sub["run"].nunique()), "view_a": a, "view_b": b,
                     "dominant": dominant,
                     "grad_ratio": ratio[0], "grad_ratio_lo": ratio[1], "grad_ratio_hi": ratio[2],
                     "share_a": sa[0], "share_a_lo": sa[1], "share_a_hi": sa[2],
                     "share_b": sb[0], "share_b_lo": sb[1], "share_b_hi": sb[2],
                     "n_pairs": test["n_pairs"], "n_a_greater": test["n_a_greater"],
                     "p": test["p"], "effect_size": test["effect_size"]})
    out = pd.DataFrame(rows)
    out["phase"] = pd.Categorical(out["phase"].astype(str), categories=phase_labels(n_phases) + ["all"])
    out = out.sort_values(["group", "phase"]).reset_index(drop=True)
    out.attrs.update(by=by, level=level, unmatched=md.attrs.get("unmatched", []))
    return out


