"""Inference over runs: intervals, exact tests, differences between conditions, power and Holm's correction.

The unit of replication is the run (one seed of one condition): every function here takes one value per run.
Layers, steps or tensors are never the n of a test; summarise each run first.

* Intervals: Student t over runs (``t_interval``), on a scale that keeps a bounded quantity in its range
  (``scale``: ``log`` for ratios and losses, a geometric mean and an interval that stays positive; ``logit`` for
  AUC and accuracy, an interval inside (0, 1); :func:`scale_of` picks it from a metric's name,
  :func:`interval_method` names it). Its coverage at n = 3, 5 and 10 is checked by simulation in the tests.
* Below :data:`MIN_RUNS` runs (n = 2) no interval, test or minimum detectable difference is given: the report
  shows the per-run values and the words of :func:`values_only`.
* One-sample question "is the per-run value on one side of 0?": the exact sign-flip (permutation) test over
  runs (``sign_flip_test``), which assumes only symmetry under the null. With n runs its smallest two-sided
  p-value is 2 / 2^n (0.25 at n = 3), and it says so (``p_min``).
* Two conditions: the difference of means with a Student-t interval, paired by seed when both conditions hold
  the same seeds (``paired t``), else Welch's t (``difference``); the exact permutation p-value beside it;
  the minimum detectable difference at 80% power for the observed spread and n (``min_detectable_difference``,
  from the noncentral t); Holm's step-down correction across the tests of one report (``holm``) and the level
  each test is held to in that step-down (``holm_levels``: the minimum detectable difference is computed there).
* Resampled (Monte Carlo) p-values are (b + 1) / (B + 1), b of B resamples at least as extreme: never 0.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize, stats

__all__ = ["INTERVAL", "MIN_RUNS", "t_interval", "t_half_width", "bounded_interval", "interval_method", "scale_of",
           "values_only", "sign_flip_test", "permutation_test", "difference", "min_detectable_difference", "holm",
           "holm_levels", "smallest_p"]

#: the name of the interval method, as the report prints it
INTERVAL = "Student t over runs"
#: the fewest runs (or pairs) for which an interval, a test or a minimum detectable difference is given
MIN_RUNS = 3
_EXACT_LIMIT = 20_000  # exact enumeration up to this many relabelings, Monte Carlo (seeded) beyond
_SCALES = ("linear", "log", "logit")


def values_only(n: int) -> str:
    """The words shown instead of an interval, test or MDD below :data:`MIN_RUNS` runs."""
    return f"n = {n}: values only"


def scale_of(name: str) -> str:
    """The scale a quantity's interval is computed on, from its name: ``logit`` for AUC and accuracy (bounded by
    0 and 1), ``log`` for losses and ratios (positive), else ``linear``."""
    low = str(name).lower()
    if "auc" in low or "acc" in low:
        return "logit"
    if "loss" in low or "ratio" in low:
        return "log"
    return "linear"


def interval_method(scale: str = "linear") -> str:
    """The interval's method in words, with its scale (``Student t over runs, log scale``)."""
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    return INTERVAL if scale == "linear" else f"{INTERVAL}, {scale} scale"


def t_half_width(std, n, level: float = 0.95):
    """Half-width of the two-sided Student-t interval of a mean, t((1 + level) / 2, n - 1) * std / sqrt(n), from
    the sample standard deviation (ddof=1) and count; NaN below :data:`MIN_RUNS`. Scalars or arrays
    (elementwise). The one Student-t interval of the package: :func:`t_interval` is built on it."""
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * np.asarray(std, float) / np.sqrt(n)
    half = np.where(n >= MIN_RUNS, half, np.nan)
    return float(half) if np.ndim(half) == 0 else half


def _forward(x: np.ndarray, scale: str) -> np.ndarray:
    if scale == "log":
        return np.log(x)
    if scale == "logit":
        return np.log(x) - np.log1p(-x)
    return x


def _back(x, scale: str):
    if scale == "log":
        return np.exp(x)
    if scale == "logit":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def _in_range(x: np.ndarray, scale: str) -> np.ndarray:
    if scale == "log":
        return x > 0
    if scale == "logit":
        return (x > 0) & (x < 1)
    return np.ones(x.shape, bool)


def t_interval(values, level: float = 0.95, *, log: bool = False, scale: str = "linear", axis: int = -1):
    """Mean over runs with the two-sided Student-t interval of the mean: (mean, lo, hi).

    ``scale``: ``linear``; ``log`` (the interval of the mean of log(values), transformed back: a geometric mean,
    for ratios and losses; ``log=True`` says the same); ``logit`` (of the mean of logit(values), transformed
    back: inside (0, 1), for AUC and accuracy). Non-finite values and values outside the scale's range are
    dropped for 1-D input; below :data:`MIN_RUNS` runs left the interval is NaN (no interval is given; the mean
    still is). N-D input: along ``axis``, every value must be usable (vectorised, for simulations)."""
    scale = "log" if log else scale
    interval_method(scale)  # checks the name
    x = np.asarray(values, float)
    if x.ndim == 1:
        x = x[np.isfinite(x) & _in_range(x, scale)]
        if x.size == 0:
            return float("nan"), float("nan"), float("nan")
    x = _forward(x, scale)
    n = x.shape[axis]
    m = x.mean(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = x.std(axis=axis, ddof=1) if n > 1 else np.full_like(m, np.nan)
    half = t_half_width(sd, n, level)
    lo, hi = _back(m - half, scale), _back(m + half, scale)
    m = _back(m, scale)
    if np.ndim(m) == 0:
        return float(m), float(lo), float(hi)
    return m, lo, hi


def bounded_interval(values, scale: str, level: float = 0.95) -> tuple[float, float, float, str]:
    """:func:`t_interval` on ``scale`` with the method's name: (mean, lo, hi, method). A value on the bound of a
    ``logit`` or ``log`` scale (an accuracy of 1, a loss of 0) cannot be transformed: then the interval is the
    linear one clipped to the range, and the method says so."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if scale != "linear" and x.size and not _in_range(x, scale).all():
        m, lo, hi = t_interval(x, level)
        bounds = (0.0, 1.0) if scale == "logit" else (0.0, np.inf)
        lo, hi = (float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))) if np.isfinite(lo) else (lo, hi)
        return m, lo, hi, f"{INTERVAL}, clipped to the range (a value on its bound)"
    return (*t_interval(x, level, scale=scale), interval_method(scale))


def smallest_p(n_a: int, n_b: int | None = None) -> float:
    """The smallest two-sided p-value an exact test can give: 2 / 2^n for the sign-flip test over n runs,
    2 / C(n_a + n_b, n_a) for the two-sample permutation test (capped at 1)."""
    if n_b is None:
        return min(1.0, 2.0 / 2 ** n_a) if n_a > 0 else float("nan")
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a)) if n_a > 0 and n_b > 0 else float("nan")


def _two_sided(null: np.ndarray, observed: float, *, resampled: bool) -> float:
    """Share of the null statistics at least as extreme as ``observed`` (with a tolerance for rounding): b / B for
    an exact enumeration (the observed labelling is among them), (b + 1) / (B + 1) for B random resamples."""
    tol = 1e-12 * max(1.0, abs(observed))
    b = int(np.count_nonzero(np.abs(null) >= abs(observed) - tol))
    return (b + 1) / (null.size + 1) if resampled else b / null.size


def sign_flip_test(d, *, seed: int = 0, n_resamples: int = _EXACT_LIMIT) -> dict:
    """Exact two-sided sign-flip test of "the per-run values ``d`` are centred on 0" (the paired permutation
    test), with the mean as statistic. Returns ``n``, ``p`` (NaN below :data:`MIN_RUNS` runs), ``p_min``
    (2 / 2^n: the smallest p this test can give with n runs) and ``exact`` (all 2^n sign patterns enumerated;
    else ``n_resamples`` random ones and p = (b + 1) / (B + 1))."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    out = {"n": n, "p": float("nan"), "p_min": smallest_p(n), "exact": True}
    if n < MIN_RUNS:
        return out
    if 2 ** n <= n_resamples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_resamples, n))
        out["exact"] = False
    out["p"] = _two_sided(signs @ d / n, d.mean(), resampled=not out["exact"])
    return out


def permutation_test(x, y, *, seed: int = 0, n_resamples: int = _EXACT_LIMIT) -> dict:
    """Two-sided permutation test of equal means of two independent samples (statistic: difference of means),
    exact when the C(n_x + n_y, n_x) relabelings are few enough (else random ones, p = (b + 1) / (B + 1)).
    Returns ``p`` (NaN when either sample has fewer than :data:`MIN_RUNS` runs), ``p_min`` and ``exact``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    out = {"p": float("nan"), "p_min": smallest_p(x.size, y.size), "exact": True}
    if min(x.size, y.size) < MIN_RUNS:
        return out
    pooled, n = np.concatenate([x, y]), x.size
    if math.comb(pooled.size, n) <= n_resamples:
        idx = np.array(list(itertools.combinations(range(pooled.size), n)))
        mask = np.zeros((len(idx), pooled.size), bool)
        mask[np.arange(len(idx))[:, None], idx] = True
    else:
        rng = np.random.default_rng(seed)
        mask = np.argsort(rng.random((n_resamples, pooled.size)), axis=1) < n
        out["exact"] = False
    null = (mask @ pooled) / n - ((~mask) @ pooled) / (pooled.size - n)
    out["p"] = _two_sided(null, x.mean() - y.mean(), resampled=not out["exact"])
    return out


def _power(ncp: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test when the true difference is ``ncp`` standard errors (noncentral t)."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = stats.nct.sf(crit, df, ncp), stats.nct.cdf(-crit, df, ncp)
    return float(np.nan_to_num(upper, nan=1.0) + np.nan_to_num(lower, nan=0.0))  # scipy's tails can underflow to NaN


def min_detectable_difference(se: float, df: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided t-test with standard error ``se`` and ``df`` degrees of
    freedom detects with probability ``power`` at level ``alpha`` (exact, from the noncentral t). NaN when
    the spread or df is unknown."""
    if not (np.isfinite(se) and np.isfinite(df) and se > 0 and df > 0):
        return float("nan")
    hi = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df) + 3.0
    while _power(hi, df, alpha) < power:  # heavy tails at df = 1 and small alpha need a wider bracket
        hi *= 2.0
        if hi > 1e12:
            return float("inf")
    ncp = optimize.brentq(lambda k: _power(k, df, alpha) - power, 0.0, hi, xtol=1e-10)
    return float(ncp * se)


def difference(a, b, *, paired: bool, level: float = 0.95, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Mean of ``b`` minus mean of ``a`` (one value per run) with its Student-t interval and test.

    ``paired``: ``a`` and ``b`` are aligned by seed (paired t on the differences, exact sign-flip test);
    else Welch's t (unequal variances) with the exact two-sample permutation test. Returns ``difference``,
    ``lo``, ``hi``, ``p`` (t-test), ``df``, ``se``, ``mdd`` (minimum detectable difference at ``power``),
    ``p_exact``, ``p_exact_min``, ``n_a``, ``n_b`` and ``method``. Below :data:`MIN_RUNS` pairs (or runs in
    either condition) only the difference is given: interval, p-values and MDD are NaN and ``method`` ends in
    :func:`values_only`'s words."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        d = b - a
        n = d.size
        se = d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        df, est = float(n - 1), float(d.mean()) if n else float("nan")
        exact = sign_flip_test(d)
        method = f"paired t by seed ({n} pairs)"
    else:
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        est = float(b.mean() - a.mean()) if a.size and b.size else float("nan")
        va = a.var(ddof=1) / a.size if a.size > 1 else float("nan")
        vb = b.var(ddof=1) / b.size if b.size > 1 else float("nan")
        se = math.sqrt(va + vb) if np.isfinite(va + vb) else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            df = float((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))) if np.isfinite(se) else float("nan")
        exact = permutation_test(b, a)
        method = f"Welch t ({a.size} and {b.size} runs)"
    few = min(a.size, b.size) < MIN_RUNS
    if few:
        exact = {"p": float("nan"), "p_min": exact["p_min"]}
        method += f"; {values_only(min(a.size, b.size))}"
    out = {"difference": est, "lo": float("nan"), "hi": float("nan"), "p": float("nan"), "df": df, "se": se,
           "mdd": float("nan"), "p_exact": exact["p"], "p_exact_min": exact["p_min"], "n_a": int(a.size),
           "n_b": int(b.size), "method": method}
    if few:
        return out
    if np.isfinite(se) and se > 0 and np.isfinite(df) and df > 0:
        half = stats.t.ppf(0.5 + level / 2, df) * se
        out.update(lo=est - half, hi=est + half, p=float(2 * stats.t.sf(abs(est) / se, df)),
                   mdd=min_detectable_difference(se, df, alpha=alpha, power=power))
    elif np.isfinite(se) and se == 0 and np.isfinite(est):
        out.update(lo=est, hi=est, p=0.0 if est != 0 else 1.0, mdd=0.0)
    return out


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN entries stay NaN and do not count."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def holm_levels(p, alpha: float = 0.05) -> np.ndarray:
    """The level each test is held to in Holm's step-down procedure over the finite ``p``: α / (m − k + 1) for
    the test of rank k (smallest p first; ties in the order given). A test is rejected when it and every
    smaller one fall below their levels; its minimum detectable difference is computed at this level. NaN
    entries stay NaN."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = alpha / (order.size - np.arange(order.size))
    return out
