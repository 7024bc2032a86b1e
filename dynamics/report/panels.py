"""The report's figures, one function each, drawn from :class:`dynamics.report.data.ReportNumbers` with the
plotting functions of :mod:`dynamics.report.figures`. Each returns ``(name, caption, figure)``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # the report never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import figures as plots  # noqa: E402

if TYPE_CHECKING:
    from .data import ReportNumbers

__all__ = ["outcome_metrics", "report_figures", "dynamics_figure", "matched_ratio_figure", "share_figure",
           "conditional_speed_figure", "conditions_figure"]

Figure = tuple[str, str, plt.Figure]

_LABELS = {"grad_norm": "gradient norm", "learning_speed": "‖g‖²/‖θ‖²", "loss_reduction": "loss reduction −Σlca"}


def outcome_metrics(names: Sequence[str], most: int = 2) -> list[str]:
    """The logged metrics worth a panel: test AUC first, then other test and validation metrics; training
    bookkeeping (loss, present counts) only when nothing else was logged."""
    def rank(name: str) -> tuple[int, str]:
        order = [name == "test_auc", name.startswith("test_"), name == "val_auc", name.startswith("val_")]
        return (next((i for i, hit in enumerate(order) if hit), len(order)), name)
    ranked = sorted(names, key=rank)
    outcomes = [n for n in ranked if rank(n)[0] < 4]
    return (outcomes or ranked)[:most]


def _row_width(n: int) -> float:
    """A row of ``n`` panels: double column for several, single for one."""
    return plots.figsize("double")[0] if n > 1 else plots.figsize("single")[0]


def dynamics_figure(nums: ReportNumbers) -> Figure:
    """Gradient norm, learning speed and cumulative loss reduction per view over steps, per group."""
    vd = nums.grouped(nums.view_dynamics)
    col = "_group" if len(nums.groups) > 1 else None
    fig = plots.dynamics_facets(vd, col=col, ys=("grad_norm", "learning_speed", "loss_reduction"),
                                palette=nums.palette, width="double")
    if col:
        for ax in fig.axes:
            ax.set_title(ax.get_title().replace("_group", nums.by or "run"))
    for ax in fig.axes:
        ax.set_ylabel(_LABELS.get(ax.get_ylabel(), ax.get_ylabel()))
    return ("dynamics", "Per-view gradient norm, learning speed ‖g‖²/‖θ‖² and cumulative loss reduction "
            "−Σ lca over steps (mean over runs, 95% band when several).", fig)


def matched_ratio_figure(nums: ReportNumbers) -> Figure:
    """log2 of the matched-layer gradient-norm ratio (depth × step), one panel per group, one colour scale."""
    md = nums.grouped(nums.matched)
    md.attrs.update(nums.matched.attrs)
    groups, (a, b) = nums.groups, nums.views
    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(_row_width(n), 2.4), squeeze=False, sharey=True)
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
    return ("matched_ratio", f"log2 of the gradient-norm ratio {a}/{b} for matched layers (depth × step); red: "
            f"{a} larger.", fig)


def share_figure(nums: ReportNumbers) -> Figure:
    """Each view's share of the cumulative loss reduction, stacked, one panel per group."""
    vd = nums.grouped(nums.view_dynamics)
    groups = nums.groups
    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(_row_width(n), 2.4), squeeze=False, sharey=True)
    for i, (ax, g) in enumerate(zip(axes[0], groups)):
        sub = vd[vd["_group"] == g]
        if sub["share"].notna().any():
            plots.share_area_plot(sub, palette=nums.palette, ax=ax)
            if i:  # the first panel names the axis, the last keeps the legend
                ax.set_ylabel("")
            if i < n - 1 and ax.get_legend() is not None:
                ax.get_legend().remove()
        if n > 1:
            ax.set_title(g)
    return ("share", "Each view's share of the cumulative loss reduction (stacked).", fig)


def conditional_speed_figure(nums: ReportNumbers) -> Figure:
    """The conditional learning speed of the compared views over training, one line per group."""
    cls = nums.grouped(nums.conditional_speed)
    a, b = nums.views
    fig, ax = plt.subplots(figsize=plots.figsize("single"))
    plots.view_lines(cls.assign(view=cls["_group"]), y="speed", hue="view",
                     palette=dict(zip(nums.groups, plots.OKABE_ITO)), ylabel=f"log speed {a} : {b}", ax=ax)
    ax.axhline(0, color="0.6", linewidth=0.5, zorder=0)
    return ("conditional_speed", f"Conditional learning speed log(Σμ_{a} / Σμ_{b}), accumulated over "
            "training (per group).", fig)


def _conditions_panel(nums: ReportNumbers, key: str, label: str, ax: plt.Axes) -> None:
    util, metrics = nums.utilization, nums.metrics
    if key == "grad_ratio":
        overall = nums.summary[nums.summary["phase"].astype(str) == "all"]
        plots.condition_plot(overall, y="grad_ratio", lo="grad_ratio_lo", hi="grad_ratio_hi", ref=1.0,
                             ylabel=label, ax=ax)
    elif key == "utilization":
        metric = "auc" if (util["metric"] == "auc").any() else util["metric"].iloc[0]
        abl = "zero" if (util["ablate"] == "zero").any() else util["ablate"].iloc[0]
        uu = util[(util["metric"] == metric) & (util["ablate"] == abl)]
        plots.condition_plot(uu, y="utilization", lo="lo", hi="hi", hue="view", palette=nums.palette,
                             ylabel=f"utilization ({metric}, {abl})", ref=0.0, ax=ax)
    else:
        plots.condition_plot(metrics[metrics["metric"] == key], y="mean", lo="lo", hi="hi", ylabel=label, ax=ax)
    ax.set_xlabel(nums.by or "run")


def conditions_figure(nums: ReportNumbers) -> Figure:
    """Groups side by side: gradient-norm ratio, the outcome metrics and utilization."""
    a, b = nums.views
    panels = [("grad_ratio", f"{a}/{b} grad-norm ratio")]
    if len(nums.metrics):
        panels += [(m, m) for m in outcome_metrics(nums.metrics["metric"].astype(str).unique())]
    if len(nums.utilization):
        panels.append(("utilization", "conditional utilization"))
    fig, axes = plt.subplots(1, len(panels), figsize=(_row_width(len(panels)), 2.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        _conditions_panel(nums, key, label, ax)
    fig.tight_layout()
    return ("conditions", "Comparison of groups (mean over runs with 95% bootstrap interval where "
            "there are several runs).", fig)


def report_figures(nums: ReportNumbers) -> list[Figure]:
    """Every figure of the report, in the order the report shows them."""
    return [dynamics_figure(nums), matched_ratio_figure(nums), share_figure(nums), conditional_speed_figure(nums),
            conditions_figure(nums)]
