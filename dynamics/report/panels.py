"""The report's figures, one function each, drawn from :class:`dynamics.report.computed.ReportNumbers` with the
plotting functions of :mod:`dynamics.report.plots` (``dynamics.plots``). Each returns ``(name, caption, figure)``.

Every figure is one size family (two journal columns wide, whole rows of ``ROW_HEIGHT`` up to a page, constrained
layout, saved uncropped), shows the groups in the report's one order (the reference first), colours views with the
view palette and conditions with the condition palette, keeps its legends outside the data and the titles, wraps
its titles and labels to their panels, and has no blank panel (a panel without data says so). Figures are bare
:class:`~matplotlib.figure.Figure` objects on an Agg canvas: the user's backend and pyplot are never touched.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from . import plots
from .interventions import intervention_figure
from .style import ROW_HEIGHT, fit_text, new_figure, plain, report_figsize
from .tables import outcome_metrics, ratio_name  # noqa: F401  (outcome_metrics kept importable here)

if TYPE_CHECKING:
    from .computed import ReportNumbers

__all__ = ["outcome_metrics", "report_figures", "dynamics_figure", "matched_ratio_figure", "share_figure",
           "conditional_speed_figure", "conditions_figure", "MAX_PAIRS"]

Figure = tuple[str, str, MplFigure]
#: at most this many pairs of views get panels of their own (every pair is in the tables)
MAX_PAIRS = 6

_LABELS = {"grad_norm": "gradient norm", "learning_speed": "‖g‖²/‖θ‖²", "loss_reduction": "loss reduction −Σlca"}
_BANDS = (f"each run's own thin line beside the mean when there are fewer than {plots.PER_RUN_BELOW} runs, else a "
          "band: the 95% Student-t interval over runs where it lies inside the runs' range, the runs' range where "
          "it does not (there the band is no longer a 95% interval)")


def _grid(n: int, ncols: int = 3) -> tuple[MplFigure, list[Axes]]:
    """``n`` panels of one size in rows of at most ``ncols`` (as even as they go: 4 are 2 + 2), a short last row
    centred: no blank panel. The report's size family."""
    rows = math.ceil(n / max(1, min(ncols, n)))
    cols = math.ceil(n / rows)
    fig = new_figure(report_figsize(rows))
    grid = fig.add_gridspec(rows, 2 * cols)
    axes = []
    for k in range(n):
        r, c = divmod(k, cols)
        start = cols - min(cols, n - r * cols) + 2 * c  # half a panel in from each side per panel missing
        axes.append(fig.add_subplot(grid[r, start:start + 2]))
    return fig, axes


def _pairs_shown(nums: ReportNumbers) -> tuple[list[tuple[str, str]], str]:
    pairs = nums.pairs[:MAX_PAIRS]
    more = f" (the first {len(pairs)} of {len(nums.pairs)} pairs; every pair is in the tables)" \
        if len(nums.pairs) > len(pairs) else ""
    return pairs, more


def dynamics_figure(nums: ReportNumbers) -> Figure:
    """Gradient norm, learning speed and cumulative loss reduction per view over steps, per group."""
    vd = nums.grouped(nums.view_dynamics)
    col = "_group" if len(nums.groups) > 1 else None
    fig = plots.dynamics_facets(vd, col=col, col_order=nums.groups if col else None, palette=nums.palette,
                                ys=("grad_norm", "learning_speed", "loss_reduction"), width="double",
                                row_height=ROW_HEIGHT, col_title="{value}", fit=False)
    for ax in fig.axes:
        ax.set_ylabel(_LABELS.get(ax.get_ylabel(), ax.get_ylabel()))
    columns = f", one column per {nums.by or 'run'}" if col else ""
    return ("dynamics", "Per-view gradient norm, learning speed ‖g‖²/‖θ‖² and cumulative loss reduction "
            f"−Σ lca over steps{columns}: mean over runs (geometric on the log axes), {_BANDS}.", fig)


def matched_ratio_figure(nums: ReportNumbers) -> Figure:
    """log2 of the matched-layer ratio (depth × step): a row per pair, a column per group."""
    md = nums.matched_cells
    pairs, more = _pairs_shown(nums)
    groups = nums.groups
    fig = new_figure(report_figsize(len(pairs)))
    axes = fig.subplots(len(pairs), len(groups), squeeze=False, sharey="row")
    missing = False
    for i, (a, b) in enumerate(pairs):
        pair = md[(md["view_a"] == a) & (md["view_b"] == b)]
        depths = sorted(set(pair.loc[np.isfinite(pair["log2_ratio"]), "depth"]))  # every panel of a row alike
        for j, g in enumerate(groups):
            ax = axes[i, j]
            sub = pair[pair["_group"] == g]
            if len(sub) and np.isfinite(sub["log2_ratio"]).any():
                sub.attrs.update(view_a=a, view_b=b)
                plots.ratio_heatmap(sub, ax=ax, colorbar=False, legend=False, y_levels=depths, weight="n")
                missing |= bool(np.ma.getmaskarray(ax.images[0].get_array()).any())
            else:
                plots.no_data(ax, "no matched layer\nwith a value")
                missing = True
            ax.set_ylabel(f"depth ({plain(a)}/{plain(b)})" if j == 0 else "")
            if i == 0 and len(groups) > 1:
                ax.set_title(plain(g, 40))
            if i < len(pairs) - 1:
                ax.set_xlabel("")
    images = [ax.images[0] for ax in axes.flat if ax.images]
    if images:  # one scale for every panel, so groups and pairs can be compared, and one colour bar
        vmax = max(im.get_clim()[1] for im in images)
        for im in images:
            im.set_clim(-vmax, vmax)
        fig.colorbar(images[0], ax=list(axes.flat), label="log2(A/B)")
    if missing:
        fig.legend(handles=[plots.missing_patch()], loc="outside lower left")
    names = ", ".join(f"{a}/{b}" for a, b in pairs)
    return ("matched_ratio", f"log2 of the matched-layer ratio A/B ({names}): the two views' gradient norms at "
            f"each depth (× step); "
            f"red: A larger; hatched grey: no data (no step recorded in that cell, or no matched layer at that depth)"
            f"{more}.", fig)


def share_figure(nums: ReportNumbers) -> Figure:
    """Each view's share of the cumulative loss reduction, stacked, one panel per group."""
    vd = nums.grouped(nums.view_dynamics)
    groups = nums.groups
    fig = new_figure(report_figsize(1))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)
    for i, (ax, g) in enumerate(zip(axes[0], groups)):
        sub = vd[vd["_group"] == g]
        if sub["share"].notna().any():
            plots.share_area_plot(sub, palette=nums.palette, ax=ax, legend=False)
        else:
            plots.no_data(ax, "no loss reduction\nrecorded")
        if i:
            ax.set_ylabel("")
        if len(groups) > 1:
            ax.set_title(plain(g, 40))
    views = [v for v in nums.palette if (vd["view"].astype(str) == v).any()]
    fig.legend(handles=[Rectangle((0, 0), 1, 1, color=nums.palette[v], label=plain(v)) for v in views],
               loc="outside right upper")
    return ("share", "Each view's share of the cumulative loss reduction (stacked; mean over runs).", fig)


def conditional_speed_figure(nums: ReportNumbers) -> Figure:
    """The conditional learning speed of each pair of views over training, one line per group."""
    cls = nums.grouped(nums.conditional_speed)
    pairs, more = _pairs_shown(nums)
    fig, axes = _grid(len(pairs))
    for ax, (a, b) in zip(axes, pairs):
        sub = cls[(cls["view_a"] == a) & (cls["view_b"] == b)]
        plots.view_lines(sub.assign(_hue=sub["_group"]), y="speed", hue="_hue", palette=nums.group_palette,
                         order=nums.groups, ylabel=f"log speed {plain(a)} : {plain(b)}", ax=ax, legend=False)
        ax.axhline(0, color="0.6", linewidth=0.5, zorder=0)
    handles = [Line2D([], [], color=nums.group_palette[g], label=plain(g)) for g in nums.groups]
    fig.legend(handles=handles, loc="outside right upper", title=plain(nums.by or "run"))
    return ("conditional_speed", "Conditional learning speed log(Σμ_A / Σμ_B) of each pair of views, accumulated "
            f"over training, one colour per {nums.by or 'run'}; {_BANDS}{more}.", fig)


def _panels(nums: ReportNumbers) -> list[tuple[str, str]]:
    pairs = nums.pairs[:3]
    panels = [(f"ratio:{a}/{b}", ratio_name(a, b)) for a, b in pairs]
    panels += [(f"metric:{m}", m) for m in nums.outcomes if (nums.metrics["metric"] == m).any()]
    if len(nums.utilization):
        panels.append(("utilization", "conditional utilization"))
    return panels


def _conditions_panel(nums: ReportNumbers, key: str, label: str, ax: Axes) -> None:
    util, metrics, common = nums.utilization, nums.metrics, dict(order=nums.groups, ax=ax, orient="h")
    if key.startswith("ratio:"):
        a, b = key[len("ratio:"):].split("/", 1)
        overall = nums.summary[(nums.summary["phase"].astype(str) == "all") & (nums.summary["view_a"] == a)
                               & (nums.summary["view_b"] == b)]
        plots.condition_plot(overall, y="grad_ratio", lo="grad_ratio_lo", hi="grad_ratio_hi", ref=1.0,
                             ylabel=plain(label), x_palette=nums.group_palette, **common)
    elif key == "utilization":
        metric = "auc" if (util["metric"] == "auc").any() else util["metric"].iloc[0]
        abl = "zero" if (util["ablate"] == "zero").any() else util["ablate"].iloc[0]
        uu = util[(util["metric"] == metric) & (util["ablate"] == abl)]
        plots.condition_plot(uu, y="utilization", lo="lo", hi="hi", hue="view", palette=nums.palette,
                             ylabel=f"utilization ({metric}, {abl})", ref=0.0, **common)
    else:
        m = key[len("metric:"):]
        plots.condition_plot(metrics[metrics["metric"] == m], y="mean", lo="lo", hi="hi", ylabel=plain(label),
                             x_palette=nums.group_palette, **common)
    ax.set_ylabel(plain(nums.by or "run"))


def conditions_figure(nums: ReportNumbers) -> Figure:
    """Groups one below the other (the reference on top), a panel per quantity: the ratio of mean gradient norms
    of (up to three) pairs, the outcome metrics and utilization; the groups' names only on each row's first panel."""
    panels = _panels(nums)
    fig, axes = _grid(len(panels))
    for ax, (key, label) in zip(axes, panels):
        _conditions_panel(nums, key, label, ax)
    rows = [ax.get_subplotspec().rowspan.start for ax in axes]
    for k, ax in enumerate(axes):
        if k and rows[k] == rows[k - 1]:  # the same groups in the same order: named once a row
            ax.sharey(axes[k - 1])
            ax.tick_params(labelleft=False)
            ax.set_ylabel("")
    return ("conditions", "Comparison of groups: mean over runs (geometric for ratios) with its 95% "
            "Student-t interval over runs where there are several runs; one colour per group.", fig)


def report_figures(nums: ReportNumbers) -> list[Figure]:
    """Every figure of the report, in the order the report shows them."""
    shown = intervention_figure(nums.data.per_step, nums.view_dynamics, group_of=nums.group_of, palette=nums.palette,
                                order=nums.groups)
    figures = [dynamics_figure(nums), matched_ratio_figure(nums), share_figure(nums), conditional_speed_figure(nums),
               conditions_figure(nums), *([shown] if shown is not None else [])]
    for name, _, fig in figures:
        if name != "interventions":  # fitted by intervention_figure itself
            fit_text(fig)
    return figures
