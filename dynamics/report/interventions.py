"""What an intervention did: its per-step decisions drawn over the per-view dynamics it acted on.

The interventions of :mod:`dynamics.balance` log their decisions into the per-step table (column names in
:mod:`dynamics.schema`): modality dropout the views' present counts, re-balancing which view each step
favoured, OGM-GE each view's gradient coefficient. :func:`intervention_figure` draws, for each kind of
decision present in the runs (one row each) and each group of runs (one column each), every view's learning
speed ‖g‖²/‖θ‖² on the left axis (geometric mean over the group's runs) and the decisions on the right axis:
the fraction of the group's runs re-balancing toward each view (shaded), the mean coefficient k of each view,
or the mean present count of each view.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # the report never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.cleaning import view_order  # noqa: E402
from ..schema import OGM_COEF_PREFIX, PRESENT_PREFIX, REBALANCED_PREFIX  # noqa: E402
from . import figures as plots  # noqa: E402

__all__ = ["KINDS", "intervention_columns", "intervention_figure"]

#: kind -> (column prefix, right-axis label)
KINDS = {
    "re-balancing": (REBALANCED_PREFIX, "fraction of runs re-balancing"),
    "OGM-GE": (OGM_COEF_PREFIX, "gradient coefficient k"),
    "modality dropout": (PRESENT_PREFIX, "samples with the view present"),
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


def _decisions(ax: plt.Axes, steps: pd.DataFrame, kind: str, columns: dict[str, str],
               palette: Mapping[str, str]) -> None:
    """The decisions of one kind on the right axis of ``ax``: means over the runs at each step."""
    right = ax.twinx()
    for view, column in columns.items():
        mean = steps.groupby("step")[column].mean().dropna()
        color = palette.get(view)
        if kind == "re-balancing":
            right.fill_between(mean.index, 0, mean.to_numpy(), step="mid", color=color, alpha=0.3, linewidth=0,
                               label=f"re-balance {view}")
        else:
            right.plot(mean.index, mean.to_numpy(), color=color, linestyle="--", linewidth=0.8,
                       label=f"{'k' if kind == 'OGM-GE' else 'present'} {view}")
    if kind == "re-balancing":
        right.set_ylim(0, 1.05)
    right.set_ylabel(KINDS[kind][1])
    right.spines["right"].set_visible(True)
    ax.set_zorder(right.get_zorder() + 1)  # the dynamics drawn over the decisions
    ax.patch.set_visible(False)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.legend(lines + more, labels + more_labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4,
              title=None, handlelength=1.5, columnspacing=1.0)


def intervention_figure(per_step: pd.DataFrame, view_dynamics: pd.DataFrame, *,
                        group_of: Mapping[str, str] | None = None, palette: Mapping[str, str] | None = None,
                        y: str = "learning_speed") -> tuple[str, str, plt.Figure] | None:
    """``(name, caption, figure)`` of the interventions' decisions over the per-view dynamics, or None when
    no run logged any. ``per_step`` and ``view_dynamics`` as loaded and analysed (both with a ``run``
    column); ``group_of``: run -> group (default: each run its own); ``palette``: view -> colour."""
    views = view_order(view_dynamics)
    kinds = intervention_columns(per_step, views)
    if not kinds:
        return None
    group_of = dict(group_of) if group_of is not None else {r: r for r in per_step["run"].astype(str).unique()}
    palette = dict(palette) if palette is not None else plots.view_palette(views)
    steps = per_step.assign(_group=per_step["run"].astype(str).map(group_of))
    vd = view_dynamics.assign(_group=view_dynamics["run"].astype(str).map(group_of))
    panels = []  # (kind, group) for every group that logged that kind
    for kind, columns in kinds.items():
        logged = steps[steps[list(columns.values())].notna().any(axis=1)]
        panels += [(kind, g) for g in sorted(logged["_group"].dropna().unique())]
    ncols = max(sum(1 for k, _ in panels if k == kind) for kind in kinds)
    fig, axes = plt.subplots(len(kinds), ncols, squeeze=False, sharex=True,
                             figsize=(plots.figsize("double" if ncols > 1 else "single")[0], 2.4 * len(kinds)))
    for r, kind in enumerate(kinds):
        mine = [g for k, g in panels if k == kind]
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(mine):
                ax.set_visible(False)
                continue
            group = mine[c]
            runs = set(steps.loc[(steps["_group"] == group) & steps[list(kinds[kind].values())].notna().any(axis=1),
                                 "run"].astype(str))
            sub = vd[vd["run"].astype(str).isin(runs) & vd["view"].astype(str).isin(list(kinds[kind]))]
            plots.view_lines(sub, y=y, palette=palette, logy=True, band=False, ylabel="‖g‖²/‖θ‖²", ax=ax)
            _decisions(ax, steps[steps["run"].astype(str).isin(runs)], kind, kinds[kind], palette)
            ax.set_title(f"{kind} ({group})", pad=16)
    fig.tight_layout()
    caption = ("What each intervention did: its per-step decisions (right axis; mean over the group's runs) over "
               "each view's learning speed ‖g‖²/‖θ‖² (left axis, log scale; geometric mean over runs).")
    return "interventions", caption, fig
