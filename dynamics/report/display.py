"""Display strings of the report's numbers: estimates with their intervals (the method named in the column),
p-values, and words where n is too small for a number to mean anything."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..analysis.inference import MIN_RUNS, values_only

__all__ = ["num", "pct", "with_ci", "p_text", "p_eq", "runs_word", "ALPHA", "T_OVER_RUNS", "test_text",
           "format_summary", "format_shares", "format_comparisons", "comparison_value", "metric_display",
           "utilization_display", "verdict", "detectable"]

ALPHA = 0.05
T_OVER_RUNS = "95% t-interval over runs"


def num(x: float, digits: int = 3) -> str:
    """``digits`` significant digits; ``–`` for a missing or non-finite value."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def pct(x: float) -> str:
    """Whole percent, but two significant digits below 1% (so a small residual does not read as 0%)."""
    if x is None or not np.isfinite(x):
        return "–"
    return f"{100 * x:.2g}%" if 0 < abs(x) < 0.01 else f"{100 * x:.0f}%"


def runs_word(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def _values(values: str, fmt: Callable[[float], str]) -> str:
    """Per-run values (a comma-separated string of numbers) in ``fmt``."""
    return ", ".join(fmt(float(v)) for v in str(values).split(",") if v.strip())


def with_ci(est: float, lo: float, hi: float, n_runs: int, fmt: Callable[[float], str] = num,
            values: str | None = None) -> str:
    """``est [lo, hi]``; below three runs ``n = 2: values only (v1, v2)`` (the per-run ``values`` when given);
    ``est (no CI)`` when there is no interval otherwise."""
    if 0 < n_runs < MIN_RUNS:
        shown = _values(values, fmt) if values is not None and str(values).strip() else fmt(est)
        return f"{values_only(n_runs)} ({shown})"
    if not np.isfinite(lo) or not np.isfinite(hi):
        return f"{fmt(est)} (no CI: {runs_word(n_runs)})"
    return f"{fmt(est)} [{fmt(lo)}, {fmt(hi)}]"


def p_text(p: float) -> str:
    """A p-value for a table: three decimals, ``< 0.001`` below that, ``–`` when missing."""
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_eq(p: float) -> str:
    """``p = 0.002`` or ``p < 0.001`` for sentences."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def test_text(p: float, p_min: float, n: int, unit: str = "run") -> str:
    """An exact test's p-value, or words when the ``n`` runs (or pairs: ``unit``) are too few for the test to
    reach ``ALPHA``."""
    units = f"{n} {unit}{'s' if n != 1 else ''}"
    if 0 < n < MIN_RUNS:
        return values_only(n)
    if n < 2 or not np.isfinite(p):
        return f"no test: {units}"
    if p_min > ALPHA:
        return f"not testable with {units} (smallest exact p {p_min:.2g})"
    return p_text(p)


#: the key table's two ratios, one name each (the sentences use the same)
RATIO_OF_MEANS = "ratio of mean gradient norms"
MATCHED_RATIO = "matched-layer ratio"
GEOMETRIC = "95% t-interval over runs, log scale"


def _holm(r) -> str:
    p = getattr(r, "p_holm", np.nan)
    return "–" if not np.isfinite(p) or r.p_min > ALPHA else p_text(p)


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The key table as display strings: per group, phase and pair of views (A/B), which of the two leads, the
    ratio of mean gradient norms and the matched-layer ratio with their Student-t intervals over runs (log
    scale), layer counts as description and the exact sign-flip test over runs (and Holm-adjusted)."""
    rows = []
    for r in summary.itertuples(index=False):
        rows.append({
            "group": r.group, "phase": str(r.phase), "views A/B": f"{r.view_a}/{r.view_b}", "runs": r.n_runs,
            "leads (its matched-layer ratio interval excludes 1)": r.leads,
            f"{RATIO_OF_MEANS} A/B ({GEOMETRIC})": with_ci(r.grad_ratio, r.grad_ratio_lo, r.grad_ratio_hi, r.n_runs,
                                                          values=getattr(r, "grad_ratio_values", None)),
            f"{MATCHED_RATIO} A/B ({GEOMETRIC})": with_ci(r.layer_ratio, r.layer_ratio_lo, r.layer_ratio_hi,
                                                         r.n_runs, values=getattr(r, "layer_ratio_values", None)),
            "layers A > B (layers × runs; description)": f"{r.n_a_greater}/{r.n_pairs}",
            "p (exact sign-flip over runs)": test_text(r.p, r.p_min, r.n_test_runs),
            "p (Holm)": _holm(r),
        })
    return pd.DataFrame(rows)


def format_shares(shares: pd.DataFrame) -> pd.DataFrame:
    """Every view's share of the loss reduction with its interval, and in how many runs it was the largest."""
    rows = [{"group": r.group, "phase": str(r.phase), "view": r.view, "runs": r.n_runs,
             f"share of loss reduction ({T_OVER_RUNS})": with_ci(r.share, r.share_lo, r.share_hi, r.n_runs, pct,
                                                                 getattr(r, "share_values", None)),
             "largest share in": f"{r.n_largest} of {runs_word(r.n_runs)}"}
            for r in shares.itertuples(index=False)]
    return pd.DataFrame(rows)


def comparison_value(x: float, row, *, difference: bool = False) -> str:
    """A value of one comparison on its own scale: a factor (×) for ratios, percentage points for shares."""
    if not np.isfinite(x):
        return "–"
    if row.scale == "log":
        return f"×{np.exp(x):.3g}" if difference else num(x)
    if "share" in str(row.quantity):
        return f"{100 * x:+.1f} pp" if difference else pct(x)
    return f"{x:+.3g}" if difference else num(x)


def _magnitude(x: float, row) -> str:
    """A detectable difference as a size: ``×a or ×b`` for ratios (either direction), unsigned otherwise."""
    if not np.isfinite(x):
        return "–"
    if row.scale == "log":
        return f"×{np.exp(-x):.3g} or ×{np.exp(x):.3g}"
    return comparison_value(x, row, difference=True).lstrip("+")


def detectable(row) -> str:
    """The minimum detectable difference at 80% power at the level Holm's step-down holds this comparison to."""
    if not np.isfinite(row.mdd):
        return "–"
    return f"{_magnitude(row.mdd, row)} (at its Holm level α = {row.alpha_holm:.2g})"


def _few(row) -> int:
    """The smaller n of a comparison (pairs, or runs in the smaller condition)."""
    return int(min(row.n_reference, row.n_group))


def verdict(row) -> str:
    """``differs`` when the Holm-adjusted p is below ``ALPHA``; else a null with its detectable difference."""
    if 0 < _few(row) < MIN_RUNS:
        return values_only(_few(row))
    if not np.isfinite(row.p):
        return "not testable: too few runs"
    if row.p_holm < ALPHA:
        return f"differs (Holm p < {ALPHA:g})"
    return "no difference detected"


def _exact(row) -> str:
    """The exact permutation p of one comparison: over the pairs when paired by seed, else over the runs."""
    if not np.isfinite(row.p_exact):
        return "–"
    if str(row.design).startswith("paired"):
        return test_text(row.p_exact, row.p_exact_min, row.n_reference, "pair")
    return test_text(row.p_exact, row.p_exact_min, row.n_reference + row.n_group)


def format_comparisons(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each condition against the reference: difference with its interval, p (t-test and Holm-adjusted), the
    exact permutation p, the minimum detectable difference at 80% power and the verdict in words."""
    rows = []
    for r in comparisons.itertuples(index=False):
        diff = comparison_value(r.difference, r, difference=True)
        ci = (f" [{comparison_value(r.lo, r, difference=True)}, {comparison_value(r.hi, r, difference=True)}]"
              if np.isfinite(r.lo) else f" ({values_only(_few(r))}: {r.reference_values} against {r.group_values})"
              if 0 < _few(r) < MIN_RUNS else " (no CI)")
        rows.append({"quantity": r.quantity, "reference": r.reference, "condition": r.group, "design": r.design,
                     "reference value": comparison_value(r.reference_mean, r),
                     "condition value": comparison_value(r.group_mean, r),
                     "difference [95% CI]": diff + ci, "p (t)": p_text(r.p), "p (Holm)": p_text(r.p_holm),
                     "p (exact permutation)": _exact(r),
                     "detectable difference (80% power)": detectable(r), "verdict": verdict(r)})
    return pd.DataFrame(rows)


def metric_display(metrics: pd.DataFrame) -> pd.DataFrame:
    """The logged-metric table for display: mean with its 95% interval over runs and the interval's method."""
    if not len(metrics):
        return metrics
    ci = [with_ci(m, lo, hi, n, values=v) for m, lo, hi, n, v in zip(metrics["mean"], metrics["lo"], metrics["hi"],
                                                                     metrics["n_runs"], metrics["values"])]
    return metrics.assign(**{"mean [95% CI]": ci})[["group", "metric", "mean [95% CI]", "n_runs", "interval"]]


def utilization_display(util: pd.DataFrame) -> pd.DataFrame:
    """The utilization table for display: rates with their intervals (and the interval's method), the rest
    rounded to 4 decimals."""
    if not len(util):
        return util
    ci = [with_ci(m, lo, hi, n) for m, lo, hi, n in zip(util["utilization"], util["lo"], util["hi"],
                                                         util["n_runs"])]
    out = util.assign(**{"utilization [95% CI]": ci}).round(4).drop(columns=["lo", "hi", "utilization"])
    return out[[c for c in out.columns if c != "interval"] + ["interval"]]
