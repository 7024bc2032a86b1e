"""Plain sentences generated from the report's numbers; no sentence claims more than its table shows.

The run is the unit of every statistic a sentence cites; layer counts are called description; where the runs
are too few for a test or an interval, the sentence says so in words instead of printing a number.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.inference import MIN_RUNS, values_only
from ..schema import DEFAULT_CONDITION, SHARED
from .display import ALPHA, MATCHED_RATIO, RATIO_OF_MEANS, comparison_value, detectable, num, p_eq, pct, runs_word

__all__ = ["findings"]


def _interval_words(lo: float, hi: float, n: int, fmt=num, scale: str = "") -> str:
    if 0 < n < MIN_RUNS:
        return values_only(n)
    if np.isfinite(lo) and np.isfinite(hi):
        return f"95% t-interval over {runs_word(n)}{scale}: {fmt(lo)}–{fmt(hi)}"
    return f"{runs_word(n)}: no interval over runs can be given"


def _largest_share(shares: pd.DataFrame, group: str, g: str, shared: str) -> list[str]:
    """The view (the shared group aside) with the largest mean share of the loss reduction, with its interval
    over runs, and every other view's share: a description over all views (pairs are tested in their rows)."""
    s = shares[(shares["group"] == group) & (shares["phase"].astype(str) == "all")].set_index("view")
    s = s[np.isfinite(s["share"].to_numpy(float))]
    rival = s[s.index != shared]
    if rival.empty:
        return []
    top_view = str(rival["share"].idxmax())
    d = s.loc[top_view]
    others = [f"{v} {pct(r.share)}" for v, r in s.iterrows() if v != top_view]
    rest = f"; the others: {', '.join(others)}" if others else ""
    return [f"{g}{top_view} had the largest mean share of the loss reduction, {pct(d.share)} "
            f"({_interval_words(d.share_lo, d.share_hi, int(d.n_runs), pct)}), and the largest share in "
            f"{int(d.n_largest)} of {runs_word(int(d.n_runs))}{rest}."]


def _test_words(r) -> str:
    n = int(r.n_test_runs)
    if 0 < n < MIN_RUNS:
        return f"no test with {runs_word(n)} ({values_only(n)})"
    if n < 1 or not np.isfinite(r.p):
        return f"with {runs_word(n)} no test over runs can be given"
    if r.p_min > ALPHA:
        return (f"the exact sign-flip test over {n} runs cannot reach p < {ALPHA:g} (its smallest p is "
                f"{r.p_min:.2g}; here p = {r.p:.2g}), so this sign-flip test cannot show it at α = {ALPHA:g}; "
                f"the t-interval rests on normality")
    holm = getattr(r, "p_holm", np.nan)
    return f"exact sign-flip test over {n} runs: {p_eq(r.p)}, Holm-adjusted {p_eq(holm)}"


def _leads_words(r) -> str:
    if r.leads == "neither":
        return f"neither of {r.view_a} and {r.view_b} leads (the interval holds 1 or none can be given)"
    return f"{r.leads} leads this pair (the interval lies {'above' if r.leads == r.view_a else 'below'} 1)"


def _matched_layers(r, g: str) -> str:
    a, b = r.view_a, r.view_b
    return (f"{g}{a}'s gradient norm exceeded {b}'s in {r.n_a_greater} of {r.n_pairs} matched layers "
            f"(layers × runs: a description, not a test); the {MATCHED_RATIO} {a}/{b} (per run, the geometric mean "
            f"over matched layers) was {num(r.layer_ratio)} "
            f"({_interval_words(r.layer_ratio_lo, r.layer_ratio_hi, r.n_runs, scale=', log scale')}): "
            f"{_leads_words(r)}; {_test_words(r)}.")


def _phases(summary: pd.DataFrame, r, g: str) -> list[str]:
    """The ratio of mean norms per phase, each with its interval; the phases are not tested against each
    other, and the sentence says so."""
    phases = summary[(summary["group"] == r.group) & (summary["phase"].astype(str) != "all")
                     & (summary["view_a"] == r.view_a) & (summary["view_b"] == r.view_b)]
    parts = [f"{num(x.grad_ratio)} ({_interval_words(x.grad_ratio_lo, x.grad_ratio_hi, int(x.n_runs))}) "
             f"{'in the middle' if str(x.phase) == 'middle' else str(x.phase)}"
             for x in phases.itertuples(index=False) if np.isfinite(x.grad_ratio)]
    if not parts:
        return []
    return [f"{g}the {RATIO_OF_MEANS} {r.view_a}/{r.view_b} was " + ", ".join(parts[:-1])
            + (" and " if len(parts) > 1 else "") + parts[-1]
            + " (log scale); the phases are not compared by a test."]


def _imbalance(summary: pd.DataFrame, shares: pd.DataFrame, shared: str) -> list[str]:
    """Per group: the view with the largest share, then per pair the matched-layer ratio and its test and the
    phases with their intervals. Groups are compared only in the comparisons (tested), never ranked here."""
    out: list[str] = []
    overall = summary[summary["phase"].astype(str) == "all"]
    several = overall["group"].nunique() > 1
    for group, rows in overall.groupby("group", sort=False):
        g = f"in {group}, " if several or group != DEFAULT_CONDITION else ""
        out += _largest_share(shares, group, g, shared)
        for r in rows.itertuples(index=False):
            if r.n_pairs:
                out.append(_matched_layers(r, g))
            out += _phases(summary, r, g)
    return out


def _comparisons(comparisons: pd.DataFrame | None) -> list[str]:
    """Outcome metrics and gradient-norm ratios against the reference; every comparison is in its table."""
    if comparisons is None or not len(comparisons):
        return []
    out = []
    for r in comparisons[~comparisons["quantity"].astype(str).str.contains("share")].itertuples(index=False):
        change = "changed" if r.scale != "log" else "multiplied"
        diff = comparison_value(r.difference, r, difference=True)
        head = f"Against {r.reference}, {r.group} {change} {r.quantity} by {diff}"
        few = int(min(r.n_reference, r.n_group))
        if 0 < few < MIN_RUNS:
            out.append(f"{head}; {values_only(few)} ({r.reference}: {r.reference_values}; {r.group}: "
                       f"{r.group_values}), no interval or test.")
            continue
        if not np.isfinite(r.p):
            out.append(f"{head}; with {r.n_reference} and {r.n_group} runs no interval or test can be given.")
            continue
        ci = f"95% CI {comparison_value(r.lo, r, difference=True)} to {comparison_value(r.hi, r, difference=True)}"
        stats = f"({ci}; {r.design}; Holm-adjusted {p_eq(r.p_holm)})"
        if r.p_holm < ALPHA:
            out.append(f"{head} {stats}: a difference.")
        else:
            out.append(f"{head} {stats}: no difference detected; with this spread and these runs a difference "
                       f"would be detected with 80% power only from {detectable(r)}.")
    return out


def _probe(probe: pd.DataFrame | None) -> list[str]:
    if probe is None or not len(probe):
        return []
    return [f"in {r.group}, on the fixed probe batch the first-order lca missed the measured loss change "
            f"by {pct(r.relative_residual_first)} of its size, the trapezoid rule by "
            f"{pct(r.relative_residual_trapezoid)} and Simpson's rule by {pct(r.relative_residual_simpson)}"
            f" (Σ|residual| / Σ|change| over {r.probed_steps} probed steps, median of {runs_word(r.n_runs)})."
            for r in probe.itertuples(index=False)]


def _metrics(metrics: pd.DataFrame | None, outcomes: Sequence[str] | None = None) -> list[str]:
    """Outcomes in sentences (``outcomes``; default the test metrics); every logged metric is in its table."""
    if metrics is None or not len(metrics):
        return []
    keep = metrics["metric"].isin(list(outcomes)) if outcomes is not None else \
        metrics["metric"].astype(str).str.startswith("test_")
    return [f"in {r.group}, the {r.metric} logged at the end was {num(r.mean)} "
            f"({_interval_words(r.lo, r.hi, int(r.n_runs), scale=_scale_words(r))})."
            for r in metrics[keep].itertuples(index=False)]


def _scale_words(r) -> str:
    method = str(getattr(r, "interval", ""))
    return f", {method.split(', ', 1)[1]}" if ", " in method else ""


def _utilization(utilization: pd.DataFrame | None) -> list[str]:
    """Sentences for AUC (when there is one); the table has every metric."""
    if utilization is None or not len(utilization):
        return []
    if (utilization["metric"] == "auc").any():
        utilization = utilization[utilization["metric"] == "auc"]
    out = []
    for r in utilization.itertuples(index=False):
        how = "replacing {} by its training mean".format(r.view) if r.ablate == "mean" else f"zeroing {r.view}"
        out.append(f"in {r.group}, {how} changed {r.metric} from {num(r.with_view)} to "
                   f"{num(r.without_view)} (conditional utilization rate {num(r.utilization, 2)}, "
                   f"{runs_word(r.n_runs)}).")
    return out


def _exclusions(exclusions: pd.DataFrame | None) -> list[str]:
    if exclusions is None:
        return []
    out = []
    for r in exclusions.itertuples(index=False):
        gradless = getattr(r, "gradless_steps", 0)
        if r.skipped_steps or r.nonfinite_steps or gradless:
            without = f", {gradless} without any gradient" if gradless else ""
            out.append(f"in run {r.run}, {r.skipped_steps} skipped{without} and {r.nonfinite_steps} non-finite "
                       f"steps of {r.recorded_steps} were excluded from every statistic.")
    return out


def _unmatched(unmatched) -> list[str]:
    if isinstance(unmatched, dict):
        return [f"Depths {list(d)} exist in only one of the views {pair} and were left out of their matched-layer "
                "comparison." for pair, d in unmatched.items() if len(d)]
    return [f"Depths {list(unmatched)} exist in only one of the compared views and were left out of the "
            "matched-layer comparison."] if len(unmatched) else []


def findings(summary: pd.DataFrame, *, shares: pd.DataFrame | None = None, metrics: pd.DataFrame | None = None,
             utilization: pd.DataFrame | None = None, exclusions: pd.DataFrame | None = None,
             unmatched: Sequence[int] | dict = (), probe: pd.DataFrame | None = None,
             comparisons: pd.DataFrame | None = None, notes: Sequence[str] = (),
             outcomes: Sequence[str] | None = None, shared: str = SHARED) -> list[str]:
    """Plain sentences generated from the numbers (no sentence claims more than the tables show).
    ``shares``: ``analysis.view_shares`` (default: the pair's shares of ``summary``); ``outcomes``: the metrics
    described in sentences (default: the test metrics)."""
    if shares is None:
        shares = _shares_from_summary(summary)
    out = (_imbalance(summary, shares, shared) + _comparisons(comparisons) + _probe(probe) + _metrics(metrics, outcomes)
           + _utilization(utilization) + _exclusions(exclusions) + _unmatched(unmatched) + list(notes))
    return [s[0].upper() + s[1:] if s.startswith("in ") else s for s in out]


def _shares_from_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The shares a summary row carries for its two views, as a view-shares table (for callers without one)."""
    rows = []
    for r in summary.itertuples(index=False):
        for v, s, lo, hi in ((r.view_a, r.share_a, r.share_a_lo, r.share_a_hi),
                             (r.view_b, r.share_b, r.share_b_lo, r.share_b_hi)):
            rows.append({"group": r.group, "phase": str(r.phase), "view": v, "share": s, "share_lo": lo,
                         "share_hi": hi, "n_runs": r.n_runs,
                         "n_largest": getattr(r, "n_largest", np.nan)})
    return pd.DataFrame(rows).drop_duplicates(["group", "phase", "view"])
