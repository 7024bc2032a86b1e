"""Which rows of a loaded table the analysis uses, and the checks every analysis function starts with.

Every function takes ``per_param`` (one row per recorded step x parameter tensor, columns ``step``,
``view``, ``layer``, ``depth``, ``grad_sq``, ``param_sq``, ``update_sq``, ``lca`` and optionally
``run``/``condition``/``seed``/``finite``/``has_grad``) and optionally ``per_step`` (``step``,
``skipped``, ...), and returns a new DataFrame. Only the stored additive sums are aggregated; norms,
ratios and shares are derived after summing, so they are exact for any grouping.

Exclusions (:func:`clean`), applied by every analysis function:

* steps the optimizer skipped (``per_step.skipped``, e.g. AMP overflow), for all views of that run;
* steps in which any tensor's gradient is non-finite, for all views of that run, so views are
  always compared on the same steps;
* rows without a gradient (``has_grad`` false: frozen or unused tensors);
* a non-finite ``update_sq`` or ``lca`` (e.g. the last step, whose update is unknown) is treated as
  missing for that quantity only.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..schema import DEFAULT_CONDITION, PARAM_KEYS, QUANTITIES

REQUIRED = tuple(k for k in PARAM_KEYS if k != "param") + QUANTITIES
PHASES = ("early", "middle", "late")


def check_columns(df: pd.DataFrame, columns: Iterable[str], table: str) -> None:
    """A clear error naming the missing columns of ``table``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table} is missing column(s) {missing}; it has {list(df.columns)}")


def with_run(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``run``/``condition``/``seed`` (one unnamed run) when a single run's table lacks them."""
    out = df
    if "run" not in df.columns:
        out = df.assign(run=pd.Categorical(["run"] * len(df)))
    if "condition" not in out.columns:
        out = out.assign(condition=pd.Categorical([DEFAULT_CONDITION] * len(out)))
    if "seed" not in out.columns:
        out = out.assign(seed=pd.array([pd.NA] * len(out), dtype="Int64"))
    return out


def view_order(per_param: pd.DataFrame, column: str = "view") -> list[str]:
    """Values of ``column`` (default: the views) present in the table, as strings, in their declared order:
    category order when categorical, else order of first appearance."""
    col = per_param[column]
    if isinstance(col.dtype, pd.CategoricalDtype):  # from the codes: no string per row
        codes = col.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(col.cat.categories)) > 0
        return list(dict.fromkeys(str(c) for c, u in zip(col.cat.categories, used) if u))
    return list(dict.fromkeys(col.astype(str)))


def phase_labels(n_phases: int) -> list[str]:
    return list(PHASES) if n_phases == 3 else [f"phase {i + 1}" for i in range(n_phases)]


def assign_phase(step: pd.Series, run: pd.Series, n_phases: int) -> pd.Categorical:
    """Phase of each step: the run's step range [first, last] cut into ``n_phases`` equal parts."""
    first = step.groupby(run, observed=True).transform("min")
    last = step.groupby(run, observed=True).transform("max")
    idx = np.floor(n_phases * (step - first) / (last - first + 1)).astype(int).clip(0, n_phases - 1)
    return pd.Categorical.from_codes(idx.to_numpy(), categories=phase_labels(n_phases))


def _step_keys(run: pd.Series, step: pd.Series, categories: pd.Index, base: int) -> np.ndarray:
    """Integer key per (run, step); runs not among ``categories`` get -1."""
    codes = pd.Categorical(run.astype(str), categories=categories).codes.astype(np.int64)
    keys = codes * base + step.to_numpy(np.int64)
    return np.where(codes < 0, -1, keys)


def skipped_steps(per_step: pd.DataFrame | None, runs: list[str]) -> pd.DataFrame:
    """(run, step) pairs the optimizer skipped, from ``per_step.skipped``."""
    if per_step is None or "skipped" not in per_step.columns:
        return pd.DataFrame({"run": [], "step": []})
    check_columns(per_step, ["step"], "per_step")
    ps = per_step[per_step["skipped"].fillna(False).astype(bool)]
    if "run" in ps.columns:
        return pd.DataFrame({"run": ps["run"].astype(str), "step": ps["step"]})
    if len(runs) > 1:
        raise ValueError("per_step has no 'run' column but per_param holds several runs")
    return pd.DataFrame({"run": [runs[0]] * len(ps), "step": ps["step"]})


def bad_rows(grad_sq: np.ndarray, param_sq: np.ndarray, finite: np.ndarray | None = None) -> np.ndarray:
    """Rows whose step is dropped for every view: a non-finite ‖g‖² or ‖θ‖², or a row the recorder marked so."""
    bad = ~np.isfinite(grad_sq) | ~np.isfinite(param_sq)
    return bad if finite is None else bad | ~finite


def usable(keys: np.ndarray, bad: np.ndarray, skipped: np.ndarray, has_grad: np.ndarray) -> np.ndarray:
    """The rows :func:`clean` keeps, on arrays: ``keys`` name each row's (run, step), ``bad`` (:func:`bad_rows`)
    and the keys ``skipped`` drop their steps whole, ``has_grad`` false drops the row alone."""
    keep = has_grad.copy()
    if bad.any() or len(skipped):
        drop = np.union1d(keys[bad], skipped)
        keep &= ~np.isin(keys, drop[drop >= 0])
    return keep


def finite_or_nan(values: np.ndarray) -> np.ndarray:
    """A non-finite ``update_sq`` or ``lca`` (e.g. the last step's, whose update is unknown) as missing."""
    return np.where(np.isfinite(values), values, np.nan)


def clean(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *, n_phases: int = 3) -> pd.DataFrame:
    """Rows usable for analysis (see the module docstring), with ``run``/``condition``/``seed`` and ``phase``."""
    check_columns(per_param, REQUIRED, "per_param")
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    df = with_run(per_param)
    df = df.assign(phase=assign_phase(df["step"], df["run"], n_phases))  # on the full recorded range
    bad = bad_rows(df["grad_sq"].to_numpy(float), df["param_sq"].to_numpy(float),
                   df["finite"].fillna(False).to_numpy(bool) if "finite" in df.columns else None)
    runs = pd.Index([str(r) for r in pd.unique(df["run"].astype(str))])
    skipped = skipped_steps(per_step, list(runs))
    keys = skipped_keys = np.zeros(0, np.int64)
    if bad.any() or len(skipped):
        base = int(max(df["step"].max(), skipped["step"].max() if len(skipped) else 0)) + 1
        keys = _step_keys(df["run"], df["step"], runs, base)
        skipped_keys = _step_keys(skipped["run"], skipped["step"].astype(np.int64), runs, base)
    has_grad = df["has_grad"].fillna(False).to_numpy(bool) if "has_grad" in df.columns else np.ones(len(df), bool)
    keep = usable(keys, bad, skipped_keys, has_grad)
    if len(df) == 0:
        raise ValueError("per_param has no rows: nothing was recorded")
    if not keep.any():
        raise ValueError("no usable rows: every recorded step was skipped, non-finite or without gradients")
    df = df[keep]
    fix = {}
    for q in ("update_sq", "lca"):
        v = df[q].to_numpy(float)
        if not np.isfinite(v).all():
            fix[q] = finite_or_nan(v)
    return df.assign(**fix) if fix else df.copy()


def exclusions(per_param: pd.DataFrame, per_step: pd.DataFrame | None = None, *,
               cleaned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run: recorded steps, steps kept, and steps dropped as skipped, without any gradient or non-finite
    (for the report).

    ``cleaned``: ``clean(per_param, per_step)`` when the caller has it already (it is not recomputed)."""
    df = with_run(per_param)
    kept = clean(per_param, per_step) if cleaned is None else cleaned
    recorded = df.groupby("run", observed=True)["step"].nunique()
    used = kept.groupby("run", observed=True)["step"].nunique().reindex(recorded.index, fill_value=0)
    out = pd.DataFrame({"recorded_steps": recorded, "used_steps": used})
    skipped = pd.Series(0, index=recorded.index)
    sk = skipped_steps(per_step, [str(r) for r in recorded.index])
    if len(sk):  # count only skipped steps that were recorded
        steps_in = df[["run", "step"]].drop_duplicates().astype({"run": str})
        sk = sk.merge(steps_in, on=["run", "step"])
        skipped = sk.groupby("run")["step"].nunique().reindex(recorded.index.astype(str), fill_value=0)
        skipped.index = recorded.index
    out["skipped_steps"] = skipped
    dropped = out["recorded_steps"] - out["used_steps"] - out["skipped_steps"]
    gradless = _gradless_steps(df, sk).reindex(recorded.index.astype(str), fill_value=0).to_numpy()
    out["gradless_steps"] = np.minimum(gradless, dropped.to_numpy())
    out["nonfinite_steps"] = dropped - out["gradless_steps"]
    return out.reset_index()


def _gradless_steps(df: pd.DataFrame, skipped: pd.DataFrame) -> pd.Series:
    """Per run: the steps, not skipped, where no tensor had a gradient (an optimizer step without a backward
    pass) and no row was non-finite; they are dropped by ``has_grad``, not as non-finite."""
    if "has_grad" not in df.columns:
        return pd.Series(dtype=np.int64)  # by str(run)
    bad = bad_rows(df["grad_sq"].to_numpy(float), df["param_sq"].to_numpy(float),
                   df["finite"].fillna(False).to_numpy(bool) if "finite" in df.columns else None)
    per = df.assign(_any=df["has_grad"].fillna(False).astype(bool), _bad=bad).groupby(
        ["run", "step"], observed=True)[["_any", "_bad"]].any().reset_index()
    per = per[~per["_any"] & ~per["_bad"]].astype({"run": str})
    if len(skipped):
        per = per.merge(skipped.assign(_skip=True), on=["run", "step"], how="left")
        per = per[per["_skip"].isna()]
    return per.groupby("run")["step"].nunique()


