"""Quantities derived when reading, never stored: norms, learning speeds and shares of the loss change.

The stored statistics are additive (sums of squares and dot products), so every grouping here is an exact sum
first and a derived value second. Skipped steps and non-finite rows are excluded where sums are taken.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

_SUMS = ["grad_sq", "param_sq", "update_sq", "lca"]


def _check(per_param: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in per_param]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; expected a per_param table from dynamics.load")


def _usable(per_param: pd.DataFrame) -> pd.DataFrame:
    """Rows with a finite gradient and a completed update (skipped steps have NaN update_sq and lca)."""
    keep = per_param["finite"] if "finite" in per_param else pd.Series(True, index=per_param.index)
    return per_param[keep & per_param["update_sq"].notna()]


def norms(per_param: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``grad_norm``, ``param_norm`` and ``update_norm`` (√ of the stored squares) added."""
    _check(per_param, ["grad_sq", "param_sq", "update_sq"])
    out = per_param.copy()
    for name in ("grad", "param", "update"):
        out[f"{name}_norm"] = np.sqrt(out[f"{name}_sq"])
    return out


def sums(per_param: pd.DataFrame, by: Sequence[str] = ("step", "view")) -> pd.DataFrame:
    """Exact group sums of the additive statistics, over usable rows only."""
    by = list(by)
    _check(per_param, by + _SUMS)
    return _usable(per_param).groupby(by, observed=True)[_SUMS].sum().reset_index()


def learning_speed(per_param: pd.DataFrame, by: Sequence[str] = ("step", "view")) -> pd.DataFrame:
    """Σ‖g‖² / Σ‖θ‖² per group (the quantity behind the conditional learning speed of Wu et al., ICML 2022)."""
    totals = sums(per_param, by)
    totals["learning_speed"] = totals["grad_sq"] / totals["param_sq"]
    return totals[list(by) + ["learning_speed"]]


def shares(per_param: pd.DataFrame, by: str = "view", per: Sequence[str] = ("step",)) -> pd.DataFrame:
    """Each group's share of the first-order loss change Σ lca within each ``per`` group (shares sum to 1)."""
    per = list(per)
    totals = sums(per_param, per + [by])
    whole = totals.groupby(per, observed=True)["lca"].transform("sum")
    totals["share"] = totals["lca"] / whole
    return totals[per + [by, "lca", "share"]]
