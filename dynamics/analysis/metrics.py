"""Classification metrics without scikit-learn: ROC AUC, accuracy, DeLong's variance and bootstrap intervals.

ROC AUC is computed from the Mann-Whitney U statistic (the probability that a random positive
scores above a random negative, ties counting one half), so it is exact, O(n log n) and needs
numpy only. Used by :mod:`dynamics.utilization` and by the training scripts in ``analyses/``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .inference import t_half_width  # the package's one Student-t interval (kept importable from here)

__all__ = ["average_ranks", "roc_auc", "accuracy", "bootstrap_ci", "percentile_interval", "t_half_width",
           "delong_covariance", "delong_variance"]


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def average_ranks(x) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of the ranks they occupy."""
    x = _as_1d(x, "x")
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # rank of the first member of each tie group
    return (first_rank + (counts - 1) / 2.0)[inverse].astype(float)


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = y.astype(bool)
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")  # undefined with one class only
    ranks = average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve via Mann-Whitney U (ties count 1/2).

    ``y_true``: labels. Binary labels (any two values; the larger one is positive) with a 1-D
    ``score``; or integer class labels 0..k-1 with a 2-D ``score`` of shape (n, k), giving
    the macro average of one-vs-rest AUCs (for k == 2, the AUC of column 1). Returns NaN when
    only one class is present, because the AUC is undefined there.
    """
    y = _as_1d(y_true, "y_true")
    s = np.asarray(score, dtype=float)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but score has {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 1:
        classes = np.unique(y)
        if classes.size > 2:
            raise ValueError(f"1-D score needs binary y_true, found {classes.size} classes")
        if classes.size < 2:
            return float("nan")
        return _binary_auc(y == classes[1], s)
    if s.ndim != 2:
        raise ValueError(f"score must be 1-D or 2-D, got shape {s.shape}")
    k = s.shape[1]
    if k == 2:
        return _binary_auc(y == 1, s[:, 1])
    aucs = [_binary_auc(y == c, s[:, c]) for c in range(k)]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def accuracy(y_true, y_pred, *, threshold: float | None = None) -> float:
    """Fraction of correct predictions.

    ``y_pred`` may be labels (compared as they are), a 2-D score matrix (argmax over columns),
    or, with ``threshold``, 1-D scores turned into 0/1 labels by ``score >= threshold``.
    """
    y = _as_1d(y_true, "y_true")
    p = np.asarray(y_pred)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but y_pred has {p.shape[0]}")
    if p.ndim == 2 and p.shape[1] > 1:
        p = p.argmax(axis=1)
    else:
        p = _as_1d(p, "y_pred")
        if threshold is not None:
            p = (p >= threshold).astype(int)
    if y.size == 0:
        return float("nan")
    return float(np.mean(p == y))


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: Sequence,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap: (estimate, low, high) of ``statistic(*samples)``.

    The samples are resampled jointly by row (e.g. labels and scores together). Resamples on
    which the statistic is NaN (an AUC with one class drawn) are dropped; if none is left, or
    there is a single row, the interval is (NaN, NaN): no interval can be given.
    """
    if not samples:
        raise ValueError("bootstrap_ci needs at least one sample")
    arrays = [np.asarray(s) for s in samples]
    n = arrays[0].shape[0]
    for i, a in enumerate(arrays):
        if a.shape[0] != n:
            raise ValueError(f"sample {i} has {a.shape[0]} rows, sample 0 has {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    estimate = float(statistic(*arrays))
    if n < 2 or n_boot < 1:
        return estimate, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        stats[b] = statistic(*(a[idx] for a in arrays))
    return (estimate, *percentile_interval(stats, level))


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values``, NaN values dropped; (NaN, NaN) when
    none is left."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(v, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _placements(y, score) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive, the share of negatives it outscores (ties ½); for
    each negative, the share of positives that outscore it. Midranks give both in O(n log n)."""
    y = _as_1d(y, "y_true").astype(bool)
    s = _as_1d(np.asarray(score, float), "score")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but score has {s.shape[0]}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < 2 or n_neg < 2:
        raise ValueError(f"DeLong's variance needs at least 2 positives and 2 negatives, got {n_pos} and {n_neg}")
    r_all = average_ranks(s)
    v10 = (r_all[y] - average_ranks(s[y])) / n_neg
    v01 = 1.0 - (r_all[~y] - average_ranks(s[~y])) / n_pos
    return v10, v01


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of the k score columns (n, k) on the same cases and their covariance matrix (k, k) by DeLong,
    DeLong & Clarke-Pearson (1988): S10 / n_pos + S01 / n_neg, the sample covariances of the structural
    components. The test-set sampling error of an AUC, and of a paired AUC difference."""
    s = np.asarray(scores, float)
    if s.ndim == 1:
        s = s[:, None]
    parts = [_placements(y_true, s[:, j]) for j in range(s.shape[1])]
    v10 = np.stack([p[0] for p in parts])
    v01 = np.stack([p[1] for p in parts])
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / v10.shape[1] + np.atleast_2d(np.cov(v01, ddof=1)) / v01.shape[1]
    return aucs, cov


def delong_variance(y_true, score) -> float:
    """DeLong's variance of one ROC AUC (see :func:`delong_covariance`)."""
    return float(delong_covariance(y_true, score)[1][0, 0])
