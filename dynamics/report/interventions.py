"""What an intervention did: its per-step decisions drawn under the per-view dynamics it acted on.

The interventions of :mod:`dynamics.balance` log their decisions into the per-step table (column names in
:mod:`dynamics.schema`): modality dropout the views' present counts, re-balancing which view each step
favoured, OGM-GE each view's gradient coefficient. :func:`intervention_figure` draws, for each kind of
decision present in the runs and each group of runs that logged it, a pair of panels sharing the step axis:
every view's learning speed ‖g‖²/‖θ‖² above (geometric mean over the group's runs, log scale) and the decisions
below, on an axis of their own (never twin axes over the lines): the fraction of the group's runs re-balancing
toward each view, the mean coefficient k of each view, or the mean present count of each view. The figure has
the report's width (two columns) whatever the number of panels.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.cleaning import view_order
from ..schema import DECISION_PREFIX, DROPOUT_KIND, OGM_KIND, REBALANCE_KIND
from . import plots
from .style import fit_text, new_figure, plain, report_figsize

__all__ = ["KINDS", "intervention_columns", "intervention_figure"]

#: kind (the interventions' own names, from :mod:`dynamics.schema`) -> (column prefix, decision axis label)
KINDS = {
    REBALANCE_KIND: (DECISION_PREFIX[REBALANCE_KIND], "fraction of runs re-balancing"),
    OGM_KIND: (DECISION_PREFIX[OGM_KIND], "gradient coefficient k"),
    DROPOUT_KIND: (DECISION_PREFIX[DROPOUT_KIND], "samples with the view"),
}


def intervention_columns(per_step: pd.DataFrame, views: list[str]) -> dict[str, dict[str, str]]:
    """Kind -> {view: column} for every kind of decision the per-step table holds for the given views."""
    out = {}
    for kind, (prefix, _) in KINDS.items():
        found = {v: f"{prefix}{v}" for v in views if f"{prefix}{v}" in per_step.columns
                 and per_step[f"{prefix}{v}"].notna().any()}
        if found:
            out[kind] = found
    return out


def _decisions(ax: Axes, steps: pd.DataFrame, kind: str, columns: dict[str, str],
               palette: Mapping[str, str]) -> None:
    """The decisions of one kind on ``ax``: means over the runs at each step, one colour per view."""
    for view, column in columns.items():
        mean = steps.groupby("step")[column].mean().dropna()
        color = palette.get(view)
        if kind == REBALANCE_KIND:
            ax.fill_between(mean.index, 0, mean.to_numpy(), step="mid", color=color, alpha=0.35, linewidth=0,
                            label=f"re-balance {plain(view)}")
        else:
            ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=0.8,
                    label=f"{'k' if kind == OGM_KIND else 'present'} {plain(view)}")
    if kind == REBALANCE_KIND:
        ax.set_ylim(0, 1.05)
    ax.set_ylabel(KINDS[kind][1])
    ax.set_xlabel("step")


def _layout(n: int) -> tuple[Figure, list[tuple[Axes, Axes]]]:
    """``n`` (dynamics, decisions) pairs of panels in rows of at most three, a short last row centred."""
    rows = math.ceil(n / min(3, n))
    cols = math.ceil(n / rows)
    fig = new_figure(report_figsize(math.ceil(1.5 * rows)))  # a pair of panels is one and a half rows
    grid = fig.add_gridspec(2 * rows, 2 * cols, height_ratios=[3, 2] * rows)
    pairs = []
    for k in range(n):
        r, c = divmod(k, cols)
        start = cols - min(cols, n - r * cols) + 2 * c
        top = fig.add_subplot(grid[2 * r, start:start + 2])
        pairs.append((top, fig.add_subplot(grid[2 * r + 1, start:start + 2], sharex=top)))
    return fig, pairs


def intervention_figure(per_step: pd.DataFrame, view_dynamics: pd.DataFrame, *,
                        group_of: Mapping[str, str] | None = None, palette: Mapping[str, str] | None = None,
                        y: str = "learning_speed",
                        order: Sequence[str] | None = None) -> tuple[str, str, Figure] | None:
    """``(name, caption, figure)`` of the interventions' decisions under the per-view dynamics, or None when
    no run logged any. ``per_step`` and ``view_dynamics`` as loaded and analysed (both with a ``run``
    column); ``group_of``: run -> group (default: each run its own); ``palette``: view -> colour; ``order``:
    the groups in order (default: sorted)."""
    views = view_order(view_dynamics)
    kinds = intervention_columns(per_step, views)
    if not kinds:
        return None
    group_of = dict(group_of) if group_of is not None else {r: r for r in per_step["run"].astype(str).unique()}
    palette = dict(palette) if palette is not None else plots.view_palette(views)
    steps = per_step.assign(_group=per_step["run"].astype(str).map(group_of))
    vd = view_dynamics.assign(_group=view_dynamics["run"].astype(str).map(group_of))
    panels = []  # (kind, group, runs) for every group that logged that kind
    for kind, columns in kinds.items():
        logged = steps[steps[list(columns.values())].notna().any(axis=1)]
        present = set(logged["_group"].dropna())
        rank = {g: i for i, g in enumerate(order)} if order is not None else {}
        for g in sorted(present, key=lambda g: (rank.get(g, len(rank)), str(g))):
            panels.append((kind, g, set(logged.loc[logged["_group"] == g, "run"].astype(str))))
    fig, axes = _layout(len(panels))
    for (top, bottom), (kind, group, runs) in zip(axes, panels):
        sub = vd[vd["run"].astype(str).isin(runs) & vd["view"].astype(str).isin(list(kinds[kind]))]
        plots.view_lines(sub, y=y, palette=palette, logy=True, band=False, ylabel="‖g‖²/‖θ‖²", ax=top,
                         legend=False)
        top.set_title(f"{kind} ({plain(group)})")
        top.set_xlabel("")
        top.tick_params(labelbottom=False)
        _decisions(bottom, steps[steps["run"].astype(str).isin(runs)], kind, kinds[kind], palette)
    shown = [v for v in views if any(v in kinds[k] for k in kinds)]
    fig.legend(handles=[Line2D([], [], color=palette.get(v), label=plain(v)) for v in shown],
               loc="outside right upper", title="view")
    caption = ("What each intervention did, per group of runs that used it: each view's learning speed "
               "‖g‖²/‖θ‖² (upper panel, log scale; geometric mean over the group's runs) and the intervention's "
               "per-step decisions for that view (lower panel; mean over the group's runs): the fraction of runs "
               "re-balancing toward the view, its gradient coefficient k, or the samples in which it was present.")
    return "interventions", caption, fit_text(fig)
