"""The per-step scalars of a run: what the user logged, and the probe's residuals."""
from __future__ import annotations

import numpy as np
import pandas as pd

from typing import Sequence

from ..schema import LR_PREFIX, PROBE_CHANGE, PROBE_PREFIX, RESERVED_SCALARS, RULES, probe_residual
from .cleaning import check_columns


def user_metrics(per_step: pd.DataFrame, *, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Per run: the last logged value of every user scalar in ``per_step`` (e.g. ``val_auc``),
    skipping bookkeeping columns (``recorded``, ``skipped``, ``clip_factor``, ``lr_*``, ``probe_*``) and
    ``exclude``."""
    check_columns(per_step, ["step"], "per_step")
    ps = per_step if "run" in per_step.columns else per_step.assign(run="run")
    cols = [c for c in ps.columns if c not in RESERVED_SCALARS and not str(c).startswith((LR_PREFIX, PROBE_PREFIX))
            and pd.api.types.is_numeric_dtype(ps[c]) and not pd.api.types.is_bool_dtype(ps[c])]
    ps = ps.sort_values("step")
    last = ps.groupby("run", observed=True)[cols].last() if cols else pd.DataFrame(index=ps["run"].unique())
    last = last[[c for c in last.columns if c not in exclude]]
    return last.dropna(axis=1, how="all").reset_index()


def probe_residuals(per_step: pd.DataFrame) -> pd.DataFrame:
    """Per run: probed steps and, per rule, Σ|actual − Σlca| / Σ|actual| over them (0 = exact).

    The ratio of sums, not a median of ratios, so steps whose loss barely changed do not dominate."""
    columns = [PROBE_CHANGE] + [probe_residual(r) for r in RULES]
    ps = per_step if "run" in per_step.columns else per_step.assign(run="run")
    if not set(columns) <= set(ps.columns):
        return pd.DataFrame(columns=["run", "probed_steps", *[f"relative_residual_{r}" for r in RULES]])
    ps = ps.dropna(subset=columns)
    rows = []
    for run, sub in ps.groupby("run", observed=True):
        change = np.abs(sub[PROBE_CHANGE]).sum()
        rows.append({"run": run, "probed_steps": len(sub), **{
            f"relative_residual_{r}": np.abs(sub[probe_residual(r)]).sum() / change if change > 0 else np.nan
            for r in RULES}})
    return pd.DataFrame(rows)
