"""Conditions against a named reference condition, one value per run, the run as the unit.

For each quantity and each condition besides the reference: the difference of means (condition minus
reference; on the log scale for ratios, so a factor) with its 95% Student-t interval, paired by seed when both
conditions hold the same seeds (each seed shares its data split and initialisation draw across conditions),
else Welch's t; the t-test p-value, Holm-corrected across every comparison of the table (one report = one
family); the exact permutation p-value beside it (sign-flip when paired); and the minimum detectable difference
at 80% power for the observed spread and n, so that a reader can tell a null from an underpowered one: at
α (``mdd``) and at α / m for the m comparisons of the table (``mdd_family``: the level at which Holm's
procedure is sure to reject, so the difference the corrected report would detect).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .cleaning import check_columns
from .inference import difference, holm, min_detectable_difference

__all__ = ["compare_conditions", "COLUMNS"]

COLUMNS = ["quantity", "scale", "reference", "group", "design", "n_reference", "n_group", "reference_mean",
           "group_mean", "difference", "lo", "hi", "se", "df", "p", "p_holm", "p_exact", "p_exact_min", "mdd",
           "mdd_family", "alpha", "power"]


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
            "p": res["p"], "p_exact": res["p_exact"], "p_exact_min": res["p_exact_min"], "mdd": res["mdd"]}


def compare_conditions(values: pd.DataFrame, *, reference: str | None = None, order: Sequence[str] | None = None,
                       level: float = 0.95, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Every quantity of every condition against the reference condition.

    ``values``: one row per run and quantity, columns ``run``, ``group``, ``seed`` (NaN when unknown),
    ``quantity``, ``value`` and optionally ``scale`` (``"log"``: compared as log(value); the difference is then
    a log factor). ``reference``: the reference group (default: the first of ``order``, else the first group
    in the table). Returns :data:`COLUMNS`; ``difference``, ``lo``, ``hi`` and ``mdd`` are on the compared
    scale (log units for ``scale == "log"``). ``p_holm``: Holm-adjusted over all rows; ``mdd``: the minimum
    detectable difference at ``power`` and ``alpha``; ``mdd_family``: the same at ``alpha`` / (rows with a p).
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
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "mdd_family")])
    out.insert(COLUMNS.index("p_holm"), "p_holm", holm(out["p"].to_numpy(float)) if len(out) else [])
    m = max(1, int(np.isfinite(out["p"].to_numpy(float)).sum()))
    family = [min_detectable_difference(se, df, alpha=alpha / m, power=power) for se, df in zip(out["se"], out["df"])]
    out.insert(COLUMNS.index("mdd_family"), "mdd_family", family)
    return out
