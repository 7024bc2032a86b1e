"""Quantities derived when reading, never stored: norms, learning speeds and shares of the loss change.

The stored statistics are additive (sums of squares and dot products), so every grouping here is an exact sum
first and a derived value second. Rows are excluded by the one rule of :func:`dynamics.analysis.cleaning.clean`
(skipped and non-finite steps, tensors without a gradient) wherever sums are taken.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..schema import QUANTITIES
from .cleaning import check_columns, clean

_SUMS = list(QUANTITIES)


def from_sums(sums: pd.DataFrame) -> dict[str, pd.Series]:
    """Norms, learning speed and lca from summed quantities (derived after summing, so exact per group)."""
    return {"grad_norm": np.sqrt(sums["grad_sq"]), "update_norm": np.sqrt(sums["update_sq"]),
            "param_norm": np.sqrt(sums["param_sq"]), "learning_speed": sums["grad_sq"] / sums["param_sq"],
            "lca": sums["lca"]}


def mean_layer_norm(layer_sq: pd.Series, level: Sequence[str]) -> pd.Series:
    """Mean over layers of each layer's norm √Σ‖·‖² (``layer_sq``: per-layer sums of squares, indexed with the
    ``level`` names kept and a layer level averaged away)."""
    return np.sqrt(layer_sq).groupby(level=list(level), observed=True).mean()


def loss_share(lca, total):
    """A group's share of a loss decrease: ``lca / total`` where the total lca is negative (the loss went down),
    NaN where it is not (a share of no decrease means nothing). Arrays or aligned Series."""
    total = pd.Series(total) if not isinstance(total, pd.Series) else total
    return np.where(total < 0, lca / total.where(total < 0), np.nan)


def norms(per_param: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``grad_norm``, ``param_norm`` and ``update_norm`` (√ of the stored squares) added, row by row
    (so per run and tensor: nothing is pooled)."""
    check_columns(per_param, ["grad_sq", "param_sq", "update_sq"], "per_param")
    out = per_param.copy()
    for name in ("grad", "param", "update"):
        out[f"{name}_norm"] = np.sqrt(out[f"{name}_sq"])
    return out


def _per_run(per_param: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """``keys`` with ``run`` first when the table holds runs (``load_runs``) and ``run`` is not a key already:
    runs are never pooled silently (to pool them, drop the column first)."""
    keys = list(keys)
    return ["run", *keys] if "run" in per_param.columns and "run" not in keys else keys


def sums(per_param: pd.DataFrame, by: Sequence[str] = ("step", "view"),
         per_step: pd.DataFrame | None = None) -> pd.DataFrame:
    """Exact group sums of the additive statistics over usable rows (NaN where a quantity is missing), per run
    whenever the table has a ``run`` column."""
    by = _per_run(per_param, by)
    check_columns(per_param, by + _SUMS, "per_param")
    return clean(per_param, per_step).groupby(by, observed=True)[_SUMS].sum(min_count=1).reset_index()


def learning_speed(per_param: pd.DataFrame, by: Sequence[str] = ("step", "view"),
                   per_step: pd.DataFrame | None = None) -> pd.DataFrame:
    """Σ‖g‖² / Σ‖θ‖² per group (the quantity behind the conditional learning speed of Wu et al., ICML 2022), per
    run whenever the table has a ``run`` column."""
    by = _per_run(per_param, by)
    totals = sums(per_param, by, per_step)
    totals["learning_speed"] = from_sums(totals)["learning_speed"]
    return totals[by + ["learning_speed"]]


def shares(per_param: pd.DataFrame, by: str = "view", per: Sequence[str] = ("step",),
           per_step: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each group's share of the first-order loss change Σ lca within each ``per`` group (shares sum to 1), per
    run whenever the table has a ``run`` column."""
    per = _per_run(per_param, per)
    totals = sums(per_param, per + [by], per_step)
    totals = totals[totals["lca"].notna()]
    whole = totals.groupby(per, observed=True)["lca"].transform("sum")
    totals["share"] = totals["lca"] / whole
    return totals[per + [by, "lca", "share"]]


def update_cosine(alignment: pd.DataFrame, per_param: pd.DataFrame, by: Sequence[str] = ("step", "view"),
                  per_step: pd.DataFrame | None = None) -> pd.DataFrame:
    """cos(Δθ_{t−1}, Δθ_t) per group: Σ Δθ_{t−1}·Δθ_t / √(Σ‖Δθ_{t−1}‖² Σ‖Δθ_t‖²) over the group's tensors (the
    cosine of the group's concatenated updates). ``alignment``: ``load_table(run, "update_alignment")``;
    ``per_param``: the same run's ``load(run, split_shared=False)[0]``, for ‖Δθ‖² of each step and the one
    before. A step counts where it and the step before are usable (:func:`~.cleaning.clean`) and the dot was
    recorded. Per run whenever the tables have a ``run`` column."""
    keys = _per_run(per_param, ["step", "param"])
    check_columns(alignment, [*keys, "update_dot"], "alignment")
    by = _per_run(per_param, [b for b in by if b != "step"]) + ["step"]
    usable = clean(per_param, per_step)[[*keys, *(b for b in by if b not in keys), "update_sq"]]
    before = usable[[*keys, "update_sq"]].assign(step=usable["step"] + 1).rename(columns={"update_sq": "before_sq"})
    rows = (alignment[[*keys, "update_dot"]].dropna(subset=["update_dot"])
            .merge(usable, on=keys).merge(before, on=keys))
    totals = rows.groupby(by, observed=True)[["update_dot", "update_sq", "before_sq"]].sum().reset_index()
    totals["update_cosine"] = totals["update_dot"] / np.sqrt(totals["update_sq"] * totals["before_sq"])
    return totals[[*by, "update_cosine"]]
