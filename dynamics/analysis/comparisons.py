"""Conditions against a named reference condition, one value per run, the run as the unit.

For each quantity and each condition besides the reference: the difference of means (condition minus
reference; on the log scale for ratios, so a factor) with its 95% Student-t interval, paired by seed when both
conditions hold the same seeds (each seed shares its data split and initialisation draw across conditions),
else Welch's t; the t-test p-value, Holm-corrected across the family (every comparison of the table, or with
:func:`holm_family` every test of a report: one report = one family); the exact permutation p-value beside it
(sign-flip when paired); and the minimum detectable difference at 80% power for the observed spread and n, at
the level Holm's step-down holds that comparison to (``alpha_holm``), so that a reader can tell a null from an
underpowered one at the level the verdict used. Below three runs (or pairs) only the difference is given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .cleaning import check_columns
from .inference import difference, holm, holm_levels, min_detectable_difference

__all__ = ["compare_conditions", "holm_family", "COLUMNS"]

COLUMNS = ["quantity", "scale", "reference", "group", "design", "n_reference", "n_group", "reference_mean",
           "group_mean", "difference", "lo", "hi", "se", "df", "p", "p_holm", "alpha_holm", "p_exact",
           "p_exact_min", "mdd", "alpha", "power", "reference_values", "group_values"]


def _values_text(values: np.ndarray, back) -> str:
    """Per-run values as a short string (what the report shows where n is too small for an interval)."""
    v = np.asarray(values, float)
    return ", ".join(f"{back(x):.4g}" for x in v if np.isfinite(x))


def _paired_by_seed(ref: pd.DataFrame, other: pd.DataFrame) -> bool:
    """Both conditions hold the same seeds, each once, at least two: the runs are paired by seed."""
    sa, sb = ref["seed"], other["seed"]
    if sa.isna().any() or sb.isna().any() or sa.duplicated().any() or sb.duplicated().any():
        return False
    return len(sa) >= 2 and set(sa.astype(str)) == set(sb.astype(str))


def _compare(ref: pd.DataFrame, other: pd.DataFrame, log: bool, level: float, alpha: float, power: float) -> dict:
    """One comparison: ``other`` minus ``ref`` (values per run; logs first when ``log``)."""
    f = (lambda v: np.log(np.where(v > 0, v, np.nan))) if log else (lambda v: v)
    paired = _paired_by_seed(ref, other)
    if paired:
        a = ref.set_index(ref["seed"].astype(str))["value"]
        b = other.set_index(other["seed"].astype(str))["value"].reindex(a.index)
        res = difference(f(a.to_numpy(float)), f(b.to_numpy(float)), paired=True, level=level, alpha=alpha, power=power)
    else:
        res = difference(f(ref["value"].to_numpy(float)), f(other["value"].to_numpy(float)), paired=False,
                         level=level, alpha=alpha, power=power)
    ra, rb = f(ref["value"].to_numpy(float)), f(other["value"].to_numpy(float))
    back = np.exp if log else (lambda x: x)
    return {"design": res["method"], "n_reference": res["n_a"], "n_group": res["n_b"],
            "reference_mean": float(back(np.nanmean(ra))) if np.isfinite(ra).any() else np.nan,
            "group_mean": float(back(np.nanmean(rb))) if np.isfinite(rb).any() else np.nan,
            "difference": res["difference"], "lo": res["lo"], "hi": res["hi"], "se": res["se"], "df": res["df"],
            "p": res["p"], "p_exact": res["p_exact"], "p_exact_min": res["p_exact_min"],
            "reference_values": _values_text(ra, back), "group_values": _values_text(rb, back)}


def compare_conditions(values: pd.DataFrame, *, reference: str | None = None, order: Sequence[str] | None = None,
                       level: float = 0.95, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Every quantity of every condition against the reference condition.

    ``values``: one row per run and quantity, columns ``run``, ``group``, ``seed`` (NaN when unknown),
    ``quantity``, ``value`` and optionally ``scale`` (``"log"``: compared as log(value); the difference is then
    a log factor). ``reference``: the reference group (default: the first of ``order``, else the first group
    in the table). Returns :data:`COLUMNS`; ``difference``, ``lo``, ``hi`` and ``mdd`` are on the compared
    scale (log units for ``scale == "log"``). ``p_holm``: Holm-adjusted over all rows (``holm_family`` puts
    them in a larger family); ``alpha_holm``: the level Holm's step-down holds the row to; ``mdd``: the minimum
    detectable difference at ``power`` and ``alpha_holm``; ``reference_values``/``group_values``: the per-run
    values (on the original scale).
    """
    check_columns(values, ["run", "group", "seed", "quantity", "value"], "values")
    if values.empty:
        return pd.DataFrame(columns=COLUMNS)
    v = values.assign(group=values["group"].astype(str), scale=values.get("scale", "linear"))
    present = list(dict.fromkeys(v["group"]))
    order = [str(g) for g in order] if order is not None else present
    reference = str(reference) if reference is not None else order[0]
    if reference not in present:
        raise ValueError(f"reference condition {reference!r} not among the groups {present}")
    rows = []
    for quantity, sub in v.groupby("quantity", sort=False):
        log = (sub["scale"] == "log").all()
        ref = sub[sub["group"] == reference]
        for group in [g for g in order if g != reference and g in set(sub["group"])]:
            other = sub[sub["group"] == group]
            rows.append({"quantity": quantity, "scale": "log" if log else "linear", "reference": reference,
                         "group": group, **_compare(ref, other, log, level, alpha, power), "alpha": alpha,
                         "power": power})
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "alpha_holm", "mdd")])
    return holm_family(out, alpha=alpha, power=power)[0]


def holm_family(comparisons: pd.DataFrame, other_p: Sequence[float] = (), *, alpha: float = 0.05,
                power: float = 0.8) -> tuple[pd.DataFrame, np.ndarray]:
    """``comparisons`` with ``p_holm``, ``alpha_holm`` and ``mdd`` (at ``alpha_holm``) over one Holm family: its
    own p-values and ``other_p`` (the report's other tests, e.g. the key table's sign-flip tests). Returns the
    table and the Holm-adjusted ``other_p``."""
    p = np.concatenate([comparisons["p"].to_numpy(float), np.asarray(other_p, float)])
    adjusted, levels = holm(p), holm_levels(p, alpha)
    n = len(comparisons)
    out = comparisons.drop(columns=[c for c in ("p_holm", "alpha_holm", "mdd") if c in comparisons.columns])
    out.insert(min(COLUMNS.index("p_holm"), len(out.columns)), "p_holm", adjusted[:n])
    out.insert(list(out.columns).index("p_holm") + 1, "alpha_holm", levels[:n])
    mdd = [np.nan if not np.isfinite(a) else 0.0 if se == 0 else min_detectable_difference(se, df, alpha=a, power=power)
           for se, df, a in zip(out["se"], out["df"], levels[:n])]
    out.insert(list(out.columns).index("p_exact_min") + 1, "mdd", mdd)
    return out, adjusted[n:]
