"""The report's run-level tables: logged metrics, utilization, probe residuals, the values compared between
conditions, notes on view sets, and the run metadata, each per group in the report's one group order.

Pure functions of the loaded data (:class:`dynamics.report.data.ReportData`) or of tables computed from it
(:class:`dynamics.report.computed.ReportNumbers` calls them; this module never reads it); intervals over runs
are Student t (:func:`dynamics.analysis.t_interval`). Display strings are in :mod:`dynamics.report.display`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from .. import analysis
from ..schema import DEFAULT_CONDITION

if TYPE_CHECKING:
    from .data import ReportData

__all__ = ["run_metrics", "metric_table", "outcome_metrics", "end_metrics", "choose_outcomes", "missing_outcomes",
           "probe_table", "utilization_table", "comparison_values", "view_set_notes", "run_table",
           "optimizer_columns", "ratio_name"]


def ratio_name(a: str, b: str) -> str:
    """The one name of the ratio of two views' mean gradient norms (the compared quantity)."""
    return f"{a}/{b} ratio of mean gradient norms"


def _in_order(df: pd.DataFrame, order: Sequence[str] | None, *keys: str) -> pd.DataFrame:
    """Rows sorted by group in ``order`` (stable), then ``keys``."""
    if df.empty or order is None:
        return df
    rank = {g: i for i, g in enumerate(order)}
    return (df.assign(_g=df["group"].map(rank)).sort_values(["_g", *keys], kind="stable")
            .drop(columns="_g").reset_index(drop=True))


def run_metrics(data: ReportData) -> pd.DataFrame:
    """Per run: the last logged value of every user scalar; empty (only a ``run`` column) when none was logged
    or the per-step table has no run column."""
    ps = data.per_step
    if ps is None or ps.empty or "step" not in ps.columns:
        return pd.DataFrame(columns=["run"])
    if "run" not in ps.columns:
        ps = ps.assign(run=str(analysis.with_run(data.sums)["run"].iloc[0]))
    um = analysis.user_metrics(ps)
    return um.assign(run=um["run"].astype(str)) if len(um.columns) > 1 else pd.DataFrame(columns=["run"])


def metric_table(run_metrics: pd.DataFrame, group_of: dict[str, str], *, level: float = 0.95,
                 order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group and user metric (last logged value per run): mean over runs and Student-t interval, on the
    scale that keeps the metric in its range (``analysis.inference.scale_of``: logit for AUC and accuracy, log
    for losses; ``interval`` names it), and the per-run ``values``."""
    from ..analysis.inference import bounded_interval, scale_of

    columns = ["group", "metric", "mean", "lo", "hi", "n_runs", "interval", "values"]
    if run_metrics.empty or len(run_metrics.columns) < 2:
        return pd.DataFrame(columns=columns)
    um = run_metrics.assign(group=run_metrics["run"].astype(str).map(group_of))
    rows = []
    for metric in [c for c in um.columns if c not in ("run", "group")]:
        for g, sub in um.groupby("group", sort=False):
            v = sub[metric].dropna().to_numpy(float)
            if v.size:
                est, lo, hi, method = bounded_interval(v, scale_of(metric), level)
                rows.append({"group": g, "metric": metric, "mean": est, "lo": lo, "hi": hi, "n_runs": int(v.size),
                             "interval": method, "values": ", ".join(f"{x:.4g}" for x in v)})
    out = pd.DataFrame(rows, columns=columns)
    if order is not None and len(out):
        metric_rank = {m: i for i, m in enumerate(dict.fromkeys(out["metric"]))}
        out = _in_order(out.assign(_m=out["metric"].map(metric_rank)), order).sort_values("_m", kind="stable")
        out = out.drop(columns="_m").reset_index(drop=True)
    return out


def outcome_metrics(names: Sequence[str], most: int = 2) -> list[str]:
    """The logged metrics worth a comparison and a panel: test AUC first, then other test and validation
    metrics; training bookkeeping (loss, present counts) only when nothing else was logged."""
    def rank(name: str) -> tuple[int, str]:
        order = [name == "test_auc", name.startswith("test_"), name == "val_auc", name.startswith("val_")]
        return (next((i for i, hit in enumerate(order) if hit), len(order)), name)
    ranked = sorted(names, key=rank)
    outcomes = [n for n in ranked if rank(n)[0] < 4]
    return (outcomes or ranked)[:most]


def end_metrics(per_step: pd.DataFrame | None, names: Sequence[str]) -> list[str]:
    """The scalars logged once, at the run's last step, in every run that logged them (test metrics logged after
    training, as ``analyses/train.py`` does): the outcomes. A scalar logged at several steps (a mini-batch's
    ``loss``, a dropout's ``present_<view>``, a per-epoch ``val_auc``) is a training scalar."""
    if per_step is None or per_step.empty or not names:
        return []
    ps = per_step if "run" in per_step.columns else per_step.assign(run="run")
    last = ps.groupby("run", observed=True)["step"].transform("max")
    out = []
    for name in names:
        if name not in ps.columns:
            continue
        logged = ps[name].notna()
        per_run = logged.groupby(ps["run"], observed=True).sum()
        at_end = (logged & (ps["step"] == last)).groupby(ps["run"], observed=True).sum()
        used = per_run > 0
        if used.any() and (per_run[used] == 1).all() and (at_end[used] == 1).all():
            out.append(name)
    return out


def choose_outcomes(logged: Sequence[str], per_step: pd.DataFrame | None,
                    named: Sequence[str] | None = None) -> list[str]:
    """The outcome metrics a report compares: ``named`` (``--metrics``; each must have been logged), else the
    scalars logged at the end of every run (:func:`end_metrics`), test AUC first (:func:`outcome_metrics`)."""
    if named is not None:
        unknown = [m for m in named if m not in logged]
        if unknown:
            raise ValueError(f"--metrics {', '.join(unknown)}: not logged by any run; the runs logged "
                             f"{sorted(logged) or 'no scalars'}")
        return list(dict.fromkeys(named))
    ends = end_metrics(per_step, logged)
    return outcome_metrics(ends, most=len(ends)) if ends else []


def missing_outcomes(run_metrics: pd.DataFrame, outcomes: Sequence[str], group_of: dict[str, str],
                     groups: Sequence[str], reference: str | None) -> list[str]:
    """A sentence per outcome metric and group that is not compared, saying why (its runs logged none)."""
    notes = []
    for m in outcomes:
        have = set() if m not in run_metrics.columns else set(
            run_metrics.loc[run_metrics[m].notna(), "run"].astype(str).map(group_of))
        lacking = [g for g in groups if g not in have]
        if reference is not None and reference in lacking:
            notes.append(f"{m} is compared for no condition: the reference {reference} logged no {m}.")
        elif lacking:
            notes.append(f"{m} is not compared for {', '.join(lacking)}: "
                         f"{'its runs' if len(lacking) == 1 else 'their runs'} logged no {m}.")
    return notes


def probe_table(data: ReportData, group_of: dict[str, str], *, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: probed steps (all runs) and each rule's relative residual (median over runs)."""
    if data.per_step is None or data.per_step.empty:
        return pd.DataFrame()
    per_run = analysis.probe_residuals(data.per_step)
    if per_run.empty:
        return per_run
    per_run = per_run.assign(group=per_run["run"].astype(str).map(group_of))
    out = per_run.groupby("group", sort=False).agg(
        probed_steps=("probed_steps", "sum"), n_runs=("run", "nunique"),
        **{f"relative_residual_{r}": (f"relative_residual_{r}", "median") for r in analysis.PROBE_RULES}).reset_index()
    return _in_order(out, order)


def utilization_table(data: ReportData, group_of: dict[str, str], *, level: float = 0.95,
                      order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group, view, metric and ablation: mean with/without-view metric and utilization rate over runs with
    a Student-t interval over runs; with one run, the run's own bootstrap interval over test cases (``interval``
    names which)."""
    if not data.utilization:
        return pd.DataFrame()
    frames = [u.assign(run=run, group=group_of.get(run, run)) for run, u in data.utilization.items()]
    u = pd.concat(frames, ignore_index=True)
    u["ablate"] = u["ablate"].fillna("zero").astype(str) if "ablate" in u.columns else "zero"
    rows = []
    for (g, v, m, abl), sub in u.groupby(["group", "view", "metric", "ablate"], sort=True):
        est, lo, hi = analysis.t_interval(sub["utilization"].to_numpy(float), level)
        interval = analysis.INTERVAL
        if len(sub) == 1:
            lo, hi = float(sub["utilization_lo"].iloc[0]), float(sub["utilization_hi"].iloc[0])
            interval = "bootstrap over test cases (1 run)"
        rows.append({"group": g, "view": v, "metric": m, "ablate": abl, "with_view": sub["with_view"].mean(),
                     "without_view": sub["without_view"].mean(), "utilization": est, "lo": lo, "hi": hi,
                     "n_runs": len(sub), "interval": interval})
    return _in_order(pd.DataFrame(rows), order)


def comparison_values(sums: pd.DataFrame, run_metrics: pd.DataFrame, outcomes: Sequence[str],
                      pair_runs: pd.DataFrame, run_summary: pd.DataFrame, views: Sequence[str], shared: str | None,
                      group_of: dict[str, str]) -> pd.DataFrame:
    """One value per run and compared quantity: the ``outcomes`` of ``run_metrics`` (training scalars are
    described, not compared), the ratio of mean gradient norms of every pair of views (log scale, from
    ``pair_runs``) and every view's share of the loss reduction (from ``run_summary``), over all of training;
    each run with its group and seed."""
    seed = analysis.with_run(sums).groupby("run", observed=True)["seed"].first()
    seed.index = seed.index.astype(str)
    parts = []
    rm = run_metrics
    for m in [m for m in outcomes if m in rm.columns]:
        parts.append(pd.DataFrame({"run": rm["run"], "quantity": m, "value": rm[m].to_numpy(float), "scale": "linear"}))
    pr = pair_runs[pair_runs["phase"] == "all"]
    for (a, b), sub in pr.groupby(["view_a", "view_b"], sort=False):
        parts.append(pd.DataFrame({"run": sub["run"], "quantity": ratio_name(a, b),
                                   "value": sub["grad_ratio"].to_numpy(float), "scale": "log"}))
    rs = run_summary[run_summary["phase"].astype(str) == "all"]
    for view in [v for v in views if v != shared]:
        sub = rs[rs["view"].astype(str) == view]
        parts.append(pd.DataFrame({"run": sub["run"].astype(str), "quantity": f"{view} share of loss reduction",
                                   "value": sub["share"].to_numpy(float), "scale": "linear"}))
    values = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "quantity", "value"])
    values = values.assign(run=values["run"].astype(str))
    return values.assign(group=values["run"].map(group_of), seed=values["run"].map(seed)).dropna(subset=["value"])


def view_set_notes(sums: pd.DataFrame, shared: str, compared: Sequence[str]) -> list[str]:
    """A sentence per view that not every run recorded: such runs are compared only on the views they share."""
    df = analysis.with_run(sums)[["run", "view"]].drop_duplicates()  # a row per run and view
    present = df.groupby(df["view"].astype(str), observed=True)["run"].agg(lambda r: sorted(set(r.astype(str))))
    runs = sorted(set(df["run"].astype(str)))
    notes = []
    for view, where in present.items():
        if view != shared and len(where) < len(runs):
            used = "compared only on those runs" if view in compared else "left out of the view comparisons"
            notes.append(f"View {view} was recorded in {len(where)} of {len(runs)} runs ({', '.join(where)}): "
                         f"{used}; runs with different view sets are compared only on the views they share.")
    return notes


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True) if v is not None else ""
    return s if len(s) <= 80 else s[:77] + "..."


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


#: the optimizer settings the runs table shows (when a run has them), in this order
KEY_SETTINGS = ("lr", "momentum", "betas", "weight_decay", "eps")


def optimizer_columns(meta: dict) -> dict[str, str]:
    """The optimizer's class (short name) and key hyper-parameters as readable columns (``lr``: the
    scheduler's initial value when there is one; of the first parameter group)."""
    opt = meta.get("optimizer")
    if not isinstance(opt, dict):
        return {"optimizer": _short(opt)} if opt else {}
    out = {"optimizer": str(opt.get("class", "")).rsplit(".", 1)[-1]}
    groups = opt.get("groups") or [{}]
    settings = {**(opt.get("defaults") or {}), **groups[0]}
    if "initial_lr" in settings:
        settings["lr"] = settings["initial_lr"]
    for key in KEY_SETTINGS:
        if settings.get(key) is not None and not (key == "momentum" and settings[key] == 0):
            out[key.replace("_", " ")] = _value(settings[key])
    if len(groups) > 1:
        out["param groups"] = str(len(groups))
    return out


def run_table(data: ReportData, exclusions: pd.DataFrame) -> pd.DataFrame:
    """One row of metadata per run, with the optimizer's class and key settings in their own columns."""
    ex = exclusions.assign(run=exclusions["run"].astype(str)).set_index("run")
    rows = []
    for run in list(dict.fromkeys(analysis.with_run(data.sums)["run"].drop_duplicates().astype(str))):
        meta = data.metas.get(run, {})
        row = {"run": run, "condition": _short(meta.get("condition") or DEFAULT_CONDITION),
               "seed": _short(meta.get("seed")), "views": ", ".join(map(str, meta.get("views", []))),
               "model": _short(meta.get("model")).rsplit(".", 1)[-1], **optimizer_columns(meta),
               "status": _short(meta.get("status")), "created": _short(meta.get("created"))}
        if run in ex.index:
            row.update(recorded_steps=int(ex.loc[run, "recorded_steps"]), used_steps=int(ex.loc[run, "used_steps"]))
        rows.append(row)
    return pd.DataFrame(rows).fillna("")
