"""The report's tables: run-level numbers per group (logged metrics, utilization, probe residuals, run
metadata) and their display strings (estimates with intervals, p-values, percentages).

Pure functions of the loaded data (:class:`dynamics.report.data.ReportData`) and a run -> group map; they
compute no view dynamics (those come from :class:`dynamics.report.data.ReportNumbers`).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from .. import analysis
from ..schema import DEFAULT_CONDITION

if TYPE_CHECKING:
    from .data import ReportData

__all__ = ["metric_table", "probe_table", "utilization_table", "run_table", "format_summary", "metric_display",
           "utilization_display", "num", "pct", "with_ci", "p_text", "p_eq", "runs_word"]


# --------------------------------------------------------------------------- numbers -> strings

def num(x: float, digits: int = 3) -> str:
    """``digits`` significant digits; ``–`` for a missing or non-finite value."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def pct(x: float) -> str:
    """Whole percent, but two significant digits below 1% (so a small residual does not read as 0%)."""
    if x is None or not np.isfinite(x):
        return "–"
    return f"{100 * x:.2g}%" if 0 < abs(x) < 0.01 else f"{100 * x:.0f}%"


def with_ci(est: float, lo: float, hi: float, n_runs: int, fmt: Callable[[float], str] = num) -> str:
    """``est [lo, hi]``, or ``est (no CI: n runs)`` when there is no interval."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return f"{fmt(est)} (no CI: {n_runs} run{'s' if n_runs != 1 else ''})"
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


def runs_word(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The key table as display strings (estimates with their 95% bootstrap intervals over runs)."""
    rows = []
    for r in summary.itertuples(index=False):
        a, b = r.view_a, r.view_b
        rows.append({
            "group": r.group, "phase": str(r.phase), "runs": r.n_runs, "dominant view": r.dominant,
            f"{a}/{b} grad-norm ratio": with_ci(r.grad_ratio, r.grad_ratio_lo, r.grad_ratio_hi, r.n_runs),
            f"{a} share of loss reduction": with_ci(r.share_a, r.share_a_lo, r.share_a_hi, r.n_runs, pct),
            f"{b} share of loss reduction": with_ci(r.share_b, r.share_b_lo, r.share_b_hi, r.n_runs, pct),
            f"layers {a} > {b}": f"{r.n_a_greater}/{r.n_pairs}",
            "Wilcoxon p": p_text(r.p), "effect r": num(r.effect_size, 2),
        })
    return pd.DataFrame(rows)


def metric_display(metrics: pd.DataFrame) -> pd.DataFrame:
    """The logged-metric table for display: mean with its interval over runs."""
    if not len(metrics):
        return metrics
    ci = [with_ci(m, lo, hi, n) for m, lo, hi, n in zip(metrics["mean"], metrics["lo"], metrics["hi"],
                                                         metrics["n_runs"])]
    return metrics.assign(**{"mean [95% CI]": ci})[["group", "metric", "mean [95% CI]", "n_runs"]]


def utilization_display(util: pd.DataFrame) -> pd.DataFrame:
    """The utilization table for display: rates with their intervals, the rest rounded to 4 decimals."""
    if not len(util):
        return util
    ci = [with_ci(m, lo, hi, n) for m, lo, hi, n in zip(util["utilization"], util["lo"], util["hi"],
                                                         util["n_runs"])]
    return util.assign(**{"utilization [95% CI]": ci}).round(4).drop(columns=["lo", "hi", "utilization"])


# --------------------------------------------------------------------------- run-level tables

def metric_table(data: ReportData, group_of: dict[str, str], *, level: float = 0.95, n_boot: int = 2000) -> pd.DataFrame:
    """Per group and user metric (last logged value per run): mean over runs and bootstrap interval."""
    um = analysis.user_metrics(data.per_step) if "run" in data.per_step.columns else pd.DataFrame()
    rows = []
    if um.empty:
        return pd.DataFrame(columns=["group", "metric", "mean", "lo", "hi", "n_runs"])
    um = um.assign(group=um["run"].astype(str).map(group_of))
    for metric in [c for c in um.columns if c not in ("run", "group")]:
        for g, sub in um.groupby("group", sort=True):
            v = sub[metric].dropna().to_numpy(float)
            if v.size == 0:
                continue
            est, lo, hi = analysis.mean_ci(v, n_boot=n_boot, level=level, seed=0)
            rows.append({"group": g, "metric": metric, "mean": est, "lo": lo, "hi": hi, "n_runs": int(v.size)})
    return pd.DataFrame(rows)


def probe_table(data: ReportData, group_of: dict[str, str]) -> pd.DataFrame:
    """Per group: probed steps (all runs) and each rule's relative residual (median over runs)."""
    per_run = analysis.probe_residuals(data.per_step)
    if per_run.empty:
        return per_run
    per_run = per_run.assign(group=per_run["run"].astype(str).map(group_of))
    return per_run.groupby("group", sort=True).agg(
        probed_steps=("probed_steps", "sum"), n_runs=("run", "nunique"),
        **{f"relative_residual_{r}": (f"relative_residual_{r}", "median") for r in analysis.PROBE_RULES}).reset_index()


def utilization_table(data: ReportData, group_of: dict[str, str], *, n_boot: int = 2000) -> pd.DataFrame:
    """Per group, view and metric: mean with/without-view metric and utilization rate over runs, with a
    bootstrap interval over runs (or the run's own interval when there is one run)."""
    if not data.utilization:
        return pd.DataFrame()
    frames = [u.assign(run=run, group=group_of.get(run, run)) for run, u in data.utilization.items()]
    u = pd.concat(frames, ignore_index=True)
    if "ablate" not in u.columns:
        u["ablate"] = "zero"
    u["ablate"] = u["ablate"].fillna("zero").astype(str)
    rows = []
    for (g, v, m, abl), sub in u.groupby(["group", "view", "metric", "ablate"], sort=True):
        est, lo, hi = analysis.mean_ci(sub["utilization"].to_numpy(float), n_boot=n_boot, level=0.95, seed=0)
        if len(sub) == 1:
            lo, hi = float(sub["utilization_lo"].iloc[0]), float(sub["utilization_hi"].iloc[0])
        rows.append({"group": g, "view": v, "metric": m, "ablate": abl, "with_view": sub["with_view"].mean(),
                     "without_view": sub["without_view"].mean(), "utilization": est, "lo": lo, "hi": hi,
                     "n_runs": len(sub)})
    return pd.DataFrame(rows)


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True) if v is not None else ""
    return s if len(s) <= 80 else s[:77] + "..."


def run_table(data: ReportData, exclusions: pd.DataFrame) -> pd.DataFrame:
    """One row of metadata per run (short strings; escaped when rendered)."""
    ex = exclusions.assign(run=exclusions["run"].astype(str)).set_index("run")
    rows = []
    for run in sorted(set(data.per_param["run"].astype(str))):
        meta = data.metas.get(run, {})
        row = {"run": run, "condition": _short(meta.get("condition") or DEFAULT_CONDITION),
               "seed": _short(meta.get("seed")), "views": ", ".join(map(str, meta.get("views", []))),
               "model": _short(meta.get("model")), "optimizer": _short(meta.get("optimizer")),
               "created": _short(meta.get("created"))}
        if run in ex.index:
            row.update(recorded_steps=int(ex.loc[run, "recorded_steps"]), used_steps=int(ex.loc[run, "used_steps"]))
        rows.append(row)
    return pd.DataFrame(rows)
