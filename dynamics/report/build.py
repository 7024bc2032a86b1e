"""The imbalance report: recorded runs -> numbers, figures and plain-sentence findings.

:func:`report` reads run directories and writes ``report.html`` (one self-contained file, figures
base64-embedded, every run-derived name HTML-escaped), ``report.md`` with ``figures/*.png|pdf``
beside it, and ``summary.csv`` (the key table, unformatted). :func:`build_report` does the same from
tables already in memory. Findings are generated from the numbers by :func:`findings`.
"""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # the report never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from .. import analysis  # noqa: E402
from ..store import loading as store, read_meta  # noqa: E402
from ..analysis.utilization import load_utilization  # noqa: E402
from ..schema import DEFAULT_CONDITION  # noqa: E402
from . import figures as plots  # noqa: E402

__all__ = ["ReportData", "load_report_data", "summary_table", "format_summary", "findings", "build_report",
           "report"]


@dataclass
class ReportData:
    """Everything a report is made from: the tables plus, per run label, meta.json and utilization, and the
    name of the shared group (default: ``shared_name`` of the metas, which must agree; None: not recorded)."""
    per_param: pd.DataFrame
    per_step: pd.DataFrame
    metas: dict[str, dict] = field(default_factory=dict)
    utilization: dict[str, pd.DataFrame] = field(default_factory=dict)
    shared: str | None = None

    def __post_init__(self) -> None:
        if self.shared is None:
            self.shared = _shared_name(self.metas)


def _shared_name(metas: dict[str, dict]) -> str | None:
    """The shared group's name the runs recorded (``shared_name``; a run without one uses the default);
    None when no run records one. Runs that disagree cannot be compared view by view: an error."""
    if not any("shared_name" in m for m in metas.values()):
        return None
    names = {run: str(m.get("shared_name", analysis.SHARED)) for run, m in metas.items()}
    if len(set(names.values())) > 1:
        raise ValueError(f"the runs name their shared group differently ({names}); report them separately")
    return next(iter(names.values()))


def _shared(data: ReportData, shared: str | None) -> str:
    """``shared`` when given, else the name the runs recorded, else the default ``"shared"``."""
    return shared if shared is not None else data.shared if data.shared is not None else analysis.SHARED


def _meta_value(meta: dict, key: str) -> Any:
    if key in meta:
        return meta[key]
    config = meta.get("config")
    if isinstance(config, dict) and key in config:
        return config[key]
    return None


def add_group_column(data: ReportData, by: str) -> ReportData:
    """Make ``by`` a column of ``per_param``, from meta.json (top level, then ``config``) when absent."""
    if by in data.per_param.columns:
        return data
    values = {}
    for run, meta in data.metas.items():
        v = _meta_value(meta, by)
        if v is None:
            raise ValueError(f"run {run!r}: no metadata field {by!r} to group by (not in meta.json or its config)")
        values[run] = str(v)
    if not values:
        raise ValueError(f"cannot group by {by!r}: not a column and no run metadata was given")
    pp = data.per_param.assign(**{by: data.per_param["run"].astype(str).map(values).astype("category")})
    return replace(data, per_param=pp)


def load_report_data(runs: Sequence[str | os.PathLike], *, progress: bool = True) -> ReportData:
    """Load run directories (each a dynamics run; paths or globs) with their metadata and utilization files,
    under the run labels ``dynamics.load_runs`` gives (``store.run_labels``)."""
    paths = store.expand_runs(runs)
    metas, util = {}, {}
    for path, label in tqdm(list(zip(paths, store.run_labels(paths))), desc="reading runs", disable=not progress,
                            unit="run"):
        metas[label] = read_meta(path)  # a directory without meta.json is refused here, by name
        u = load_utilization(path)
        if u is not None:
            util[label] = u
    per_param, per_step = store.load_runs(paths)
    return ReportData(per_param, per_step, metas, util)


# --------------------------------------------------------------------------- numbers -> text

def summary_table(data: ReportData, *, by: str | None = "condition", views: Sequence[str] | None = None,
                  shared: str | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """The key table (``analysis.imbalance_summary``) for the report's grouping. ``shared``: the shared
    group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    if by is not None:
        data = add_group_column(data, by)
    return analysis.imbalance_summary(data.per_param, data.per_step, by=by, views=views,
                                      shared=_shared(data, shared), n_boot=n_boot)


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    """Whole percent, but two significant digits below 1% (so a small residual does not read as 0%)."""
    if x is None or not np.isfinite(x):
        return "–"
    return f"{100 * x:.2g}%" if 0 < abs(x) < 0.01 else f"{100 * x:.0f}%"


def _with_ci(est: float, lo: float, hi: float, n_runs: int, fmt=_num) -> str:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return f"{fmt(est)} (no CI: {n_runs} run{'s' if n_runs != 1 else ''})"
    return f"{fmt(est)} [{fmt(lo)}, {fmt(hi)}]"


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_eq(p: float) -> str:
    """``p = 0.002`` or ``p < 0.001`` for sentences."""
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The key table as display strings (estimates with their 95% bootstrap intervals over runs)."""
    rows = []
    for r in summary.itertuples(index=False):
        a, b = r.view_a, r.view_b
        rows.append({
            "group": r.group, "phase": str(r.phase), "runs": r.n_runs, "dominant view": r.dominant,
            f"{a}/{b} grad-norm ratio": _with_ci(r.grad_ratio, r.grad_ratio_lo, r.grad_ratio_hi, r.n_runs),
            f"{a} share of loss reduction": _with_ci(r.share_a, r.share_a_lo, r.share_a_hi, r.n_runs, _pct),
            f"{b} share of loss reduction": _with_ci(r.share_b, r.share_b_lo, r.share_b_hi, r.n_runs, _pct),
            f"layers {a} > {b}": f"{r.n_a_greater}/{r.n_pairs}",
            "Wilcoxon p": _p(r.p), "effect r": _num(r.effect_size, 2),
        })
    return pd.DataFrame(rows)


def _runs_word(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def findings(summary: pd.DataFrame, *, metrics: pd.DataFrame | None = None,
             utilization: pd.DataFrame | None = None, exclusions: pd.DataFrame | None = None,
             unmatched: Sequence[int] = (), probe: pd.DataFrame | None = None) -> list[str]:
    """Plain sentences generated from the numbers (no sentence claims more than the table shows)."""
    out: list[str] = []
    overall = summary[summary["phase"].astype(str) == "all"]
    for r in overall.itertuples(index=False):
        g = f"in {r.group}, " if overall["group"].nunique() > 1 or r.group != DEFAULT_CONDITION else ""
        a, b = r.view_a, r.view_b
        share = r.share_a if r.dominant == a else r.share_b if r.dominant == b else np.nan
        if np.isfinite(share):
            lo = r.share_a_lo if r.dominant == a else r.share_b_lo
            hi = r.share_a_hi if r.dominant == a else r.share_b_hi
            ci = (f" (95% CI {_pct(lo)}–{_pct(hi)}, {_runs_word(r.n_runs)})" if np.isfinite(lo) else
                  f" ({_runs_word(r.n_runs)}: no interval can be given)")
            other, other_share = (b, r.share_b) if r.dominant == a else (a, r.share_a)
            rest = f", {other} for {_pct(other_share)}" if np.isfinite(other_share) else ""
            out.append(f"{g}{r.dominant} was the dominant view: it accounted for {_pct(share)} of the loss "
                       f"reduction{ci}{rest}.")
        else:
            out.append(f"{g}{r.dominant} was the dominant view by gradient norm (no loss reduction was recorded).")
        if r.n_pairs:
            test = (f"Wilcoxon {_p_eq(r.p)}, rank-biserial r = {_num(r.effect_size, 2)}" if np.isfinite(r.p)
                    else "too few pairs for a Wilcoxon test")
            across = " across seeds" if r.n_runs > 1 else ""
            out.append(f"{g}{a}'s gradient norm exceeded {b}'s in {r.n_a_greater} of {r.n_pairs} matched "
                       f"layers{across} ({test}, {_runs_word(r.n_runs)}).")
        phases = summary[(summary["group"] == r.group) & (summary["phase"].astype(str) != "all")]
        if len(phases) and phases["grad_ratio"].notna().any():
            parts = [f"{_num(x, 3)} {'in the middle' if str(ph) == 'middle' else str(ph)}"
                     for ph, x in zip(phases["phase"], phases["grad_ratio"]) if np.isfinite(x)]
            out.append(f"{g}the {a}/{b} gradient-norm ratio was " + ", ".join(parts[:-1])
                       + (" and " if len(parts) > 1 else "") + parts[-1] + " in training.")
    if overall["group"].nunique() > 1 and overall["grad_ratio"].notna().sum() > 1:
        o = overall.dropna(subset=["grad_ratio"])
        lo, hi = o.loc[o["grad_ratio"].idxmin()], o.loc[o["grad_ratio"].idxmax()]
        a, b = lo.view_a, lo.view_b
        out.append(f"The {a}/{b} gradient-norm ratio was closest to balance under {lo.group} "
                   f"({_num(lo.grad_ratio)}) and largest under {hi.group} ({_num(hi.grad_ratio)})"
                   if abs(np.log(lo.grad_ratio)) <= abs(np.log(hi.grad_ratio)) else
                   f"The {a}/{b} gradient-norm ratio was lowest under {lo.group} ({_num(lo.grad_ratio)}) and "
                   f"highest under {hi.group} ({_num(hi.grad_ratio)})")
        out[-1] += "."
    if probe is not None and len(probe):
        for r in probe.itertuples(index=False):
            out.append(f"in {r.group}, on the fixed probe batch the first-order lca missed the measured loss change "
                       f"by {_pct(r.relative_residual_first)} of its size, the trapezoid rule by "
                       f"{_pct(r.relative_residual_trapezoid)} and Simpson's rule by {_pct(r.relative_residual_simpson)}"
                       f" (Σ|residual| / Σ|change| over {r.probed_steps} probed steps, {_runs_word(r.n_runs)}).")
    if metrics is not None and len(metrics):  # outcomes in sentences; every logged metric is in its table
        metrics = metrics[metrics["metric"].astype(str).str.startswith("test_")]
        for r in metrics.itertuples(index=False):
            ci = f" [{_num(r.lo)}, {_num(r.hi)}]" if np.isfinite(r.lo) else ""
            out.append(f"in {r.group}, the last logged {r.metric} was {_num(r.mean)}{ci} ({_runs_word(r.n_runs)}).")
    if utilization is not None and len(utilization):
        if (utilization["metric"] == "auc").any():  # sentences for AUC; the table has every metric
            utilization = utilization[utilization["metric"] == "auc"]
        for r in utilization.itertuples(index=False):
            how = "replacing {} by its training mean".format(r.view) if r.ablate == "mean" else f"zeroing {r.view}"
            out.append(f"in {r.group}, {how} changed {r.metric} from {_num(r.with_view)} to "
                       f"{_num(r.without_view)} (conditional utilization rate {_num(r.utilization, 2)}, "
                       f"{_runs_word(r.n_runs)}).")
    if exclusions is not None:
        for r in exclusions.itertuples(index=False):
            if r.skipped_steps or r.nonfinite_steps:
                out.append(f"in run {r.run}, {r.skipped_steps} skipped and {r.nonfinite_steps} non-finite steps of "
                           f"{r.recorded_steps} were excluded from every statistic.")
    if len(unmatched):
        out.append(f"Depths {list(unmatched)} exist in only one of the compared views and were left out of the "
                   "matched-layer comparison.")
    return [s[0].upper() + s[1:] if s.startswith("in ") else s for s in out]


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


def run_table(data: ReportData, exclusions: pd.DataFrame) -> pd.DataFrame:
    """One row of metadata per run (short strings; escaped when rendered)."""
    ex = exclusions.assign(run=exclusions["run"].astype(str)).set_index("run")
    rows = []
    for run in sorted(set(data.per_param["run"].astype(str))):
        meta = data.metas.get(run, {})
        def short(v: Any) -> str:
            s = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True) if v is not None else ""
            return s if len(s) <= 80 else s[:77] + "..."
        row = {"run": run, "condition": short(meta.get("condition") or DEFAULT_CONDITION), "seed": short(meta.get("seed")),
               "views": ", ".join(map(str, meta.get("views", []))), "model": short(meta.get("model")),
               "optimizer": short(meta.get("optimizer")), "created": short(meta.get("created"))}
        if run in ex.index:
            row.update(recorded_steps=int(ex.loc[run, "recorded_steps"]), used_steps=int(ex.loc[run, "used_steps"]))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- rendering

def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ")
    if df.empty:
        return "_(none)_\n"
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="–")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table.t{border-collapse:collapse;font-size:13px;margin:1em 0}table.t td,table.t th{border-bottom:1px "
        "solid #ddd;padding:3px 8px;text-align:left}figure{margin:1.5em 0}img{max-width:100%}"
        "figcaption{font-size:13px;color:#555}")


_LABELS = {"grad_norm": "gradient norm", "learning_speed": "‖g‖²/‖θ‖²", "loss_reduction": "loss reduction −Σlca"}


def _outcome_metrics(names: Sequence[str], most: int = 2) -> list[str]:
    """The logged metrics worth a panel: test AUC first, then other test and validation metrics; training
    bookkeeping (loss, present counts) only when nothing else was logged."""
    def rank(name: str) -> tuple[int, str]:
        order = [name == "test_auc", name.startswith("test_"), name == "val_auc", name.startswith("val_")]
        return (next((i for i, hit in enumerate(order) if hit), len(order)), name)
    ranked = sorted(names, key=rank)
    outcomes = [n for n in ranked if rank(n)[0] < 4]
    return (outcomes or ranked)[:most]


def _figures(by: str | None, groups: list[str], vd: pd.DataFrame, md: pd.DataFrame,
             cls: pd.DataFrame, summary: pd.DataFrame, metrics: pd.DataFrame, util: pd.DataFrame,
             palette: dict[str, str]) -> list[tuple[str, str, plt.Figure]]:
    """(name, caption, figure) for every figure of the report."""
    figs = []
    col = "_group" if len(groups) > 1 else None
    fig = plots.dynamics_facets(vd, col=col, ys=("grad_norm", "learning_speed", "loss_reduction"), palette=palette,
                                width="double")
    if col:
        for ax in fig.axes:
            ax.set_title(ax.get_title().replace("_group", by or "run"))
    for ax in fig.axes:
        ax.set_ylabel(_LABELS.get(ax.get_ylabel(), ax.get_ylabel()))
    figs.append(("dynamics", "Per-view gradient norm, learning speed ‖g‖²/‖θ‖² and cumulative loss reduction "
                 "−Σ lca over steps (mean over runs, 95% band when several).", fig))
    n = len(groups)
    a, b = md.attrs.get("view_a"), md.attrs.get("view_b")
    w = plots.figsize("double")[0] if n > 1 else plots.figsize("single")[0]
    fig, axes = plt.subplots(1, n, figsize=(w, 2.4), squeeze=False, sharey=True)
    for i, (ax, g) in enumerate(zip(axes[0], groups)):
        sub = md[md["_group"] == g] if len(md) else md
        if len(sub) and np.isfinite(sub["log2_ratio"]).any():
            sub.attrs.update(md.attrs)
            plots.ratio_heatmap(sub, ax=ax, colorbar=False)
        if i:
            ax.set_ylabel("")
        if n > 1:
            ax.set_title(g)
    images = [ax.images[0] for ax in axes[0] if ax.images]
    if images:  # one scale for every panel, so the groups can be compared, and one colour bar
        vmax = max(im.get_clim()[1] for im in images)
        for im in images:
            im.set_clim(-vmax, vmax)
        fig.colorbar(images[0], ax=list(axes[0]), label=f"log2({a}/{b})")
    figs.append(("matched_ratio", f"log2 of the gradient-norm ratio {a}/{b} for matched layers (depth × step); red: "
                 f"{a} larger.", fig))
    fig, axes = plt.subplots(1, n, figsize=(w, 2.4), squeeze=False, sharey=True)
    for i, (ax, g) in enumerate(zip(axes[0], groups)):
        sub = vd[vd["_group"] == g]
        if sub["share"].notna().any():
            plots.share_area_plot(sub, palette=palette, ax=ax)
            if i:  # the first panel names the axis, the last keeps the legend
                ax.set_ylabel("")
            if i < n - 1 and ax.get_legend() is not None:
                ax.get_legend().remove()
        if n > 1:
            ax.set_title(g)
    figs.append(("share", "Each view's share of the cumulative loss reduction (stacked).", fig))
    fig, ax = plt.subplots(figsize=plots.figsize("single"))
    plots.view_lines(cls.assign(view=cls["_group"]), y="speed", hue="view",
                     palette=dict(zip(groups, plots.OKABE_ITO)), ylabel=f"log speed {a} : {b}", ax=ax)
    ax.axhline(0, color="0.6", linewidth=0.5, zorder=0)
    figs.append(("conditional_speed", f"Conditional learning speed log(Σμ_{a} / Σμ_{b}), accumulated over "
                 "training (per group).", fig))
    panels = [("grad_ratio", f"{a}/{b} grad-norm ratio")]
    if len(metrics):
        panels += [(m, m) for m in _outcome_metrics(metrics["metric"].astype(str).unique())]
    if len(util):
        panels.append(("utilization", "conditional utilization"))
    fig, axes = plt.subplots(1, len(panels), figsize=(plots.figsize("double")[0] if len(panels) > 1 else
                                                       plots.figsize("single")[0], 2.4), squeeze=False)
    overall = summary[summary["phase"].astype(str) == "all"]
    for ax, (key, label) in zip(axes[0], panels):
        if key == "grad_ratio":
            plots.condition_plot(overall, y="grad_ratio", lo="grad_ratio_lo", hi="grad_ratio_hi", ref=1.0,
                                 ylabel=label, ax=ax)
        elif key == "utilization":
            metric = "auc" if (util["metric"] == "auc").any() else util["metric"].iloc[0]
            abl = "zero" if (util["ablate"] == "zero").any() else util["ablate"].iloc[0]
            uu = util[(util["metric"] == metric) & (util["ablate"] == abl)]
            plots.condition_plot(uu, y="utilization", lo="lo", hi="hi", hue="view", palette=palette,
                                 ylabel=f"utilization ({metric}, {abl})", ref=0.0, ax=ax)
        else:
            plots.condition_plot(metrics[metrics["metric"] == key], y="mean", lo="lo", hi="hi", ylabel=label, ax=ax)
        ax.set_xlabel(by or "run")
    fig.tight_layout()
    figs.append(("conditions", "Comparison of groups (mean over runs with 95% bootstrap interval where "
                 "there are several runs).", fig))
    return figs


def build_report(data: ReportData, out: str | os.PathLike, *, by: str | None = "condition",
                 views: Sequence[str] | None = None, shared: str | None = None,
                 title: str = "dynamics imbalance report", progress: bool = True, n_boot: int = 2000) -> dict[str, Path]:
    """Compute every statistic and write report.html, report.md, figures/ and summary.csv under ``out``.
    ``shared``: the shared group's name (default: the one the runs recorded, see :class:`ReportData`)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=6, desc="report", disable=not progress, unit="stage")
    if by is not None:
        data = add_group_column(data, by)
    pp, ps = data.per_param, data.per_step
    shared = _shared(data, shared)
    runs = analysis.with_run(pp)
    group_of = dict(zip(runs["run"].astype(str), (runs[by] if by else runs["run"]).astype(str)))
    groups = sorted(set(group_of.values()))
    steps.set_postfix_str("summary")
    kept = analysis.clean(pp, ps)  # each table below is computed once, from the same cleaned rows
    vd = analysis.view_dynamics(pp, ps, cleaned=kept)
    md = analysis.matched_depth(pp, ps, views=views, shared=shared, cleaned=kept)
    a, b = md.attrs["view_a"], md.attrs["view_b"]
    summary = analysis.imbalance_summary(pp, ps, by=by, views=(a, b), shared=shared, n_boot=n_boot, vd=vd, md=md)
    steps.update()
    cls = analysis.conditional_learning_speed(pp, ps, views=(a, b), shared=shared, vd=vd)
    vd, md, cls = (t.assign(_group=t["run"].astype(str).map(group_of)) for t in (vd, md, cls))
    ex = analysis.exclusions(pp, ps, cleaned=kept)
    metrics = metric_table(data, group_of, n_boot=n_boot)
    util = utilization_table(data, group_of, n_boot=n_boot)
    steps.update()
    steps.set_postfix_str("figures")
    palette = plots.view_palette(analysis.view_order(pp), shared=shared)
    figure_files = []
    with plots.publication_style():
        for name, caption, fig in _figures(by, groups, vd, md, cls, summary, metrics, util, palette):
            paths = plots.save_figure(fig, out / "figures" / name)
            plt.close(fig)
            figure_files.append((name, caption, paths[-1]))
    steps.update(2)
    steps.set_postfix_str("writing")
    sentences = findings(summary, metrics=metrics, utilization=util, exclusions=ex,
                         unmatched=md.attrs.get("unmatched", []), probe=probe_table(data, group_of))
    table = format_summary(summary)
    summary.to_csv(out / "summary.csv", index=False)
    meta_table = run_table(data, ex)
    metric_disp = metrics.assign(**{"mean [95% CI]": [_with_ci(m, lo, hi, n) for m, lo, hi, n in zip(
        metrics["mean"], metrics["lo"], metrics["hi"], metrics["n_runs"])]})[["group", "metric", "mean [95% CI]", "n_runs"]] \
        if len(metrics) else metrics
    util_disp = util.assign(**{"utilization [95% CI]": [_with_ci(m, lo, hi, n) for m, lo, hi, n in zip(
        util["utilization"], util["lo"], util["hi"], util["n_runs"])]}).round(4).drop(columns=["lo", "hi", "utilization"]) \
        if len(util) else util
    by_word = html.escape(by or "run")
    # ---- markdown
    md_lines = [f"# {html.escape(title)}", "", f"{_runs_word(len(group_of))} grouped by `{by_word}`; views compared: "
                f"{html.escape(a)} vs {html.escape(b)}.", "", "## Findings", ""]
    md_lines += [f"- {html.escape(s, quote=False)}" for s in sentences] + ["", "## Imbalance statistics", "",
                                                                           _md_table(table)]
    if len(metrics):
        md_lines += ["## Logged metrics (last value per run)", "", _md_table(metric_disp)]
    if len(util):
        md_lines += ["## Conditional utilization", "", _md_table(util_disp)]
    md_lines += ["## Figures", ""]
    for name, caption, path in figure_files:
        md_lines += [f"![{name}](figures/{path.name})", "", f"*{html.escape(caption, quote=False)}* "
                     f"([PDF](figures/{name}.pdf))", ""]
    md_lines += ["## Runs", "", _md_table(meta_table)]
    (out / "report.md").write_text("\n".join(md_lines), encoding="utf-8")
    # ---- html
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{_runs_word(len(group_of))} grouped by <code>{by_word}</code>; "
            f"views compared: {html.escape(a)} vs {html.escape(b)}.</p>", "<h2>Findings</h2><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in sentences] + ["</ul>", "<h2>Imbalance statistics</h2>",
                                                                  _html_table(table)]
    if len(metrics):
        body += ["<h2>Logged metrics (last value per run)</h2>", _html_table(metric_disp)]
    if len(util):
        body += ["<h2>Conditional utilization</h2>", _html_table(util_disp)]
    body.append("<h2>Figures</h2>")
    for name, caption, path in figure_files:
        data64 = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data64}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    body += ["<h2>Runs</h2>", _html_table(meta_table)]
    doc = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(doc, encoding="utf-8")
    steps.update(2)
    steps.close()
    return {"html": out / "report.html", "md": out / "report.md", "csv": out / "summary.csv",
            "figures": out / "figures"}


def report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, by: str | None = "condition",
           views: Sequence[str] | None = None, progress: bool = True, **kwargs: Any) -> dict[str, Path]:
    """Read run directories and write the report under ``out`` (see :func:`build_report`)."""
    data = load_report_data(runs, progress=progress)
    return build_report(data, out, by=by, views=views, progress=progress, **kwargs)
