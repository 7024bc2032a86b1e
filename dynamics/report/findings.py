"""Plain sentences generated from the report's numbers; no sentence claims more than its table shows."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..schema import DEFAULT_CONDITION
from .tables import num, p_eq, pct, runs_word

__all__ = ["findings"]


def _dominance(r, g: str) -> str:
    """The dominant view and its share of the loss reduction, with the interval over runs."""
    a, b = r.view_a, r.view_b
    share = r.share_a if r.dominant == a else r.share_b if r.dominant == b else np.nan
    if not np.isfinite(share):
        return f"{g}{r.dominant} was the dominant view by gradient norm (no loss reduction was recorded)."
    lo = r.share_a_lo if r.dominant == a else r.share_b_lo
    hi = r.share_a_hi if r.dominant == a else r.share_b_hi
    ci = (f" (95% CI {pct(lo)}–{pct(hi)}, {runs_word(r.n_runs)})" if np.isfinite(lo) else
          f" ({runs_word(r.n_runs)}: no interval can be given)")
    other, other_share = (b, r.share_b) if r.dominant == a else (a, r.share_a)
    rest = f", {other} for {pct(other_share)}" if np.isfinite(other_share) else ""
    return f"{g}{r.dominant} was the dominant view: it accounted for {pct(share)} of the loss reduction{ci}{rest}."


def _matched_layers(r, g: str) -> str:
    a, b = r.view_a, r.view_b
    test = (f"Wilcoxon {p_eq(r.p)}, rank-biserial r = {num(r.effect_size, 2)}" if np.isfinite(r.p)
            else "too few pairs for a Wilcoxon test")
    across = " across seeds" if r.n_runs > 1 else ""
    return (f"{g}{a}'s gradient norm exceeded {b}'s in {r.n_a_greater} of {r.n_pairs} matched "
            f"layers{across} ({test}, {runs_word(r.n_runs)}).")


def _phases(summary: pd.DataFrame, r, g: str) -> list[str]:
    phases = summary[(summary["group"] == r.group) & (summary["phase"].astype(str) != "all")]
    if not (len(phases) and phases["grad_ratio"].notna().any()):
        return []
    parts = [f"{num(x, 3)} {'in the middle' if str(ph) == 'middle' else str(ph)}"
             for ph, x in zip(phases["phase"], phases["grad_ratio"]) if np.isfinite(x)]
    return [f"{g}the {r.view_a}/{r.view_b} gradient-norm ratio was " + ", ".join(parts[:-1])
            + (" and " if len(parts) > 1 else "") + parts[-1] + " in training."]


def _extremes(overall: pd.DataFrame) -> list[str]:
    """Which group was closest to balance and which furthest (several groups only)."""
    if not (overall["group"].nunique() > 1 and overall["grad_ratio"].notna().sum() > 1):
        return []
    o = overall.dropna(subset=["grad_ratio"])
    lo, hi = o.loc[o["grad_ratio"].idxmin()], o.loc[o["grad_ratio"].idxmax()]
    a, b = lo.view_a, lo.view_b
    if abs(np.log(lo.grad_ratio)) <= abs(np.log(hi.grad_ratio)):
        return [f"The {a}/{b} gradient-norm ratio was closest to balance under {lo.group} "
                f"({num(lo.grad_ratio)}) and largest under {hi.group} ({num(hi.grad_ratio)})."]
    return [f"The {a}/{b} gradient-norm ratio was lowest under {lo.group} ({num(lo.grad_ratio)}) and "
            f"highest under {hi.group} ({num(hi.grad_ratio)})."]


def _imbalance(summary: pd.DataFrame) -> list[str]:
    out: list[str] = []
    overall = summary[summary["phase"].astype(str) == "all"]
    for r in overall.itertuples(index=False):
        g = f"in {r.group}, " if overall["group"].nunique() > 1 or r.group != DEFAULT_CONDITION else ""
        out.append(_dominance(r, g))
        if r.n_pairs:
            out.append(_matched_layers(r, g))
        out += _phases(summary, r, g)
    return out + _extremes(overall)


def _probe(probe: pd.DataFrame | None) -> list[str]:
    if probe is None or not len(probe):
        return []
    return [f"in {r.group}, on the fixed probe batch the first-order lca missed the measured loss change "
            f"by {pct(r.relative_residual_first)} of its size, the trapezoid rule by "
            f"{pct(r.relative_residual_trapezoid)} and Simpson's rule by {pct(r.relative_residual_simpson)}"
            f" (Σ|residual| / Σ|change| over {r.probed_steps} probed steps, {runs_word(r.n_runs)})."
            for r in probe.itertuples(index=False)]


def _metrics(metrics: pd.DataFrame | None) -> list[str]:
    """Outcomes in sentences (test metrics only); every logged metric is in its table."""
    if metrics is None or not len(metrics):
        return []
    metrics = metrics[metrics["metric"].astype(str).str.startswith("test_")]
    out = []
    for r in metrics.itertuples(index=False):
        ci = f" [{num(r.lo)}, {num(r.hi)}]" if np.isfinite(r.lo) else ""
        out.append(f"in {r.group}, the last logged {r.metric} was {num(r.mean)}{ci} ({runs_word(r.n_runs)}).")
    return out


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
    return [f"in run {r.run}, {r.skipped_steps} skipped and {r.nonfinite_steps} non-finite steps of "
            f"{r.recorded_steps} were excluded from every statistic."
            for r in exclusions.itertuples(index=False) if r.skipped_steps or r.nonfinite_steps]


def findings(summary: pd.DataFrame, *, metrics: pd.DataFrame | None = None,
             utilization: pd.DataFrame | None = None, exclusions: pd.DataFrame | None = None,
             unmatched: Sequence[int] = (), probe: pd.DataFrame | None = None) -> list[str]:
    """Plain sentences generated from the numbers (no sentence claims more than the table shows)."""
    out = _imbalance(summary) + _probe(probe) + _metrics(metrics) + _utilization(utilization) + _exclusions(exclusions)
    if len(unmatched):
        out.append(f"Depths {list(unmatched)} exist in only one of the compared views and were left out of the "
                   "matched-layer comparison.")
    return [s[0].upper() + s[1:] if s.startswith("in ") else s for s in out]
