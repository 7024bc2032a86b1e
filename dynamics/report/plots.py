"""Publication figures of per-view training dynamics, in the seaborn calling style.

Axes-level functions take ``data=`` first, keyword-only column names and ``ax=``, and return the
Axes; :func:`dynamics_facets` is the figure-level function that facets. All use the one style of
:mod:`dynamics.report.style` (re-exported here: :func:`publication_style`, :data:`SIZES`,
:func:`view_palette`, :func:`save_figure`). Nothing here selects a backend: without ``ax=`` a function draws on
pyplot's current axes (imported then, as seaborn does), and :func:`dynamics_facets` returns a bare
:class:`~matplotlib.figure.Figure` of its own.
Inputs are the tables from :mod:`dynamics.analysis` (``view_dynamics``, ``matched_depth``,
``imbalance_summary``...).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..analysis.cleaning import check_columns, view_order
from ..analysis.metrics import t_half_width
from .style import (CONDITION_COLORS, MISSING_COLOR, MISSING_HATCH, OKABE_ITO, ROW_HEIGHT, SHARED_COLOR,  # noqa: F401
                    SIZES, STYLE, condition_palette, figsize, fit_text, new_figure, plain, publication_style,
                    report_figsize, save_figure, view_palette)

__all__ = ["SIZES", "OKABE_ITO", "SHARED_COLOR", "STYLE", "publication_style", "figsize", "view_palette",
           "view_lines", "grad_norm_plot", "loss_reduction_plot", "share_area_plot", "ratio_heatmap",
           "condition_plot", "dynamics_facets", "save_figure", "condition_palette", "legend_outside",
           "missing_patch", "no_data", "plain", "PER_RUN_BELOW", "CONDITION_COLORS", "MISSING_COLOR", "ROW_HEIGHT",
           "report_figsize", "new_figure", "fit_text"]


def _axes(ax: Axes | None) -> Axes:
    """``ax``, else pyplot's current axes (pyplot imported only then: the caller asked for its state)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    return plt.gca()


def _check(data: pd.DataFrame, *columns: str | None) -> None:
    """``check_columns`` for the named columns (``None``: an optional column not asked for)."""
    check_columns(data, [c for c in columns if c is not None], "data")


def _palette(palette: Mapping[str, str] | None, levels: Sequence[str]) -> dict[str, str]:
    """The palette given (copied), else :func:`view_palette` of ``levels``."""
    return dict(palette) if palette is not None else view_palette(levels)


def _mean_band(data: pd.DataFrame, x: str, y: str, units: str | None, level: float) -> pd.DataFrame:
    """Mean of ``y`` over units at each ``x`` with the Student-t interval of the mean over units (NaN for one
    unit) and the units' range (``min``, ``max``; the band is clipped to it: it never claims values no run had)."""
    if units is not None and units in data.columns:
        per_unit = data.groupby([units, x], observed=True)[y].mean().reset_index()
    else:
        per_unit = data[[x, y]]
    g = per_unit.groupby(x, observed=True)[y]
    out = g.agg(["mean", "std", "count", "min", "max"])
    half = t_half_width(out["std"].to_numpy(), out["count"].to_numpy(float), level)
    out["lo"] = np.maximum(out["mean"] - half, out["min"])
    out["hi"] = np.minimum(out["mean"] + half, out["max"])
    return out.reset_index()


#: below this many runs the figures draw each run's line instead of a band (a band from 2 or 3 runs is mostly
#: the t quantile: 12.7 and 4.3 standard errors wide)
PER_RUN_BELOW = 4


def legend_outside(ax: Axes, **kwargs) -> None:
    """The axes' legend to the right of its data area (never over the data); nothing without labels."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _per_run(sub: pd.DataFrame, x: str, y: str, units: str | None) -> list[pd.DataFrame]:
    """Each unit's (run's) series, sorted by ``x``; one series when there is no unit column."""
    if units is None or units not in sub.columns:
        return [sub.groupby(x, observed=True)[y].mean().reset_index()]
    return [u.groupby(x, observed=True)[y].mean().reset_index() for _, u in sub.groupby(units, observed=True)]


def view_lines(data: pd.DataFrame, *, x: str = "step", y: str, hue: str = "view", units: str | None = "run",
               palette: Mapping[str, str] | None = None, band: bool = True, level: float = 0.95,
               logy: bool = False, ylabel: str | None = None, ax: Axes | None = None,
               order: Sequence[str] | None = None, legend: bool = True) -> Axes:
    """One line per ``hue`` level: the mean of ``y`` over ``units`` (runs) at each ``x``. With fewer than
    :data:`PER_RUN_BELOW` units each unit's own line is drawn thin beside the mean (gid ``"run"``); with more, a
    ``level`` Student-t band over units, clipped to the units' range. With ``logy`` means and bands are taken on
    log(y) (geometric), so they stay positive on the log axis. ``order``: the hue levels and their order."""
    _check(data, x, y, hue)
    ax = _axes(ax)
    levels = list(order) if order is not None else view_order(data, hue)
    palette = _palette(palette, levels)
    for lev in levels:
        sub = data[data[hue].astype(str) == lev]
        if sub.empty:
            continue
        n_units = sub[units].nunique() if units is not None and units in sub.columns else 1
        if logy:
            sub = sub[sub[y] > 0].assign(**{y: lambda d: np.log(d[y])})
        back = np.exp if logy else (lambda v: v)
        m = _mean_band(sub, x, y, units, level)
        color = palette.get(lev)
        ax.plot(m[x], back(m["mean"]), color=color, label=plain(lev))
        if band and 1 < n_units < PER_RUN_BELOW:
            for run in _per_run(sub, x, y, units):
                ax.plot(run[x], back(run[y]), color=color, linewidth=0.5, alpha=0.45, gid="run", label="_run")
        elif band and m["lo"].notna().any():
            ax.fill_between(m[x], back(m["lo"]), back(m["hi"]), color=color, alpha=0.25, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    if legend:
        legend_outside(ax)
    return ax


def grad_norm_plot(data: pd.DataFrame, *, x: str = "step", y: str = "grad_norm", hue: str = "view",
                   units: str | None = "run", palette: Mapping[str, str] | None = None,
                   ax: Axes | None = None) -> Axes:
    """Gradient norm per view over steps (mean and 95% band over seeds), log scale."""
    return view_lines(data, x=x, y=y, hue=hue, units=units, palette=palette, logy=True,
                      ylabel="gradient norm ‖g‖", ax=ax)


def loss_reduction_plot(data: pd.DataFrame, *, x: str = "step", y: str = "loss_reduction", hue: str = "view",
                        units: str | None = "run", palette: Mapping[str, str] | None = None,
                        ax: Axes | None = None) -> Axes:
    """Cumulative loss reduction −Σ lca per view over steps (mean and 95% band over seeds)."""
    ax = view_lines(data, x=x, y=y, hue=hue, units=units, palette=palette, ylabel="cumulative loss reduction",
                    ax=ax)
    ax.axhline(0.0, color="0.6", linewidth=0.5, zorder=0)
    return ax


def share_area_plot(data: pd.DataFrame, *, x: str = "step", y: str = "share", hue: str = "view",
                    palette: Mapping[str, str] | None = None, ax: Axes | None = None,
                    legend: bool = True) -> Axes:
    """Each view's share of the cumulative loss reduction as a stacked area (mean over runs)."""
    _check(data, x, y, hue)
    ax = _axes(ax)
    levels = view_order(data, hue)
    palette = _palette(palette, levels)
    wide = data.assign(**{hue: data[hue].astype(str)}).pivot_table(index=x, columns=hue, values=y,
                                                                    aggfunc="mean", observed=True)
    wide = wide.reindex(columns=levels).dropna(how="all")
    ax.stackplot(wide.index.to_numpy(), *[wide[lev].fillna(0.0).to_numpy() for lev in levels],
                 labels=[plain(lev) for lev in levels], colors=[palette.get(lev) for lev in levels], alpha=0.85,
                 linewidth=0)
    ax.set_xlabel(x)
    ax.set_ylabel("share of loss reduction")
    if legend:
        legend_outside(ax)
    return ax


def ratio_heatmap(data: pd.DataFrame, *, x: str = "step", y: str = "depth", value: str = "log2_ratio",
                  bins: int = 40, ax: Axes | None = None, cmap: str = "RdBu_r",
                  label: str | None = None, colorbar: bool = True, legend: bool = True,
                  y_levels: Sequence | None = None, weight: str | None = None) -> Axes:
    """Matched-layer ratio as a heatmap: ``y`` (depth) × ``x`` (steps cut into ``bins`` equal bins),
    the mean of ``value`` over runs and the steps of a bin (``weight``: a column of the rows each value is a mean
    of, e.g. runs, so that the cell is the mean over those rows), on a diverging scale centred at 0 (± the largest
    magnitude drawn; ``ax.images[0].set_clim`` puts several panels on one scale). Cells without a value (no
    step recorded in the bin, e.g. ``every="log"``; a depth in ``y_levels`` this table lacks) are drawn hatched
    grey, never in a data colour, with the legend entry ``no data`` (``legend``) outside the data.
    ``y_levels``: the rows to show (default: those in the table), so that panels of one figure align."""
    _check(data, x, y, value)
    ax = _axes(ax)
    d = data[np.isfinite(data[value].to_numpy(float))]
    if d.empty:
        raise ValueError(f"no finite values in column {value!r} to draw")
    lo, hi = float(d[x].min()), float(d[x].max())
    nb = int(max(1, min(bins, d[x].nunique())))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, nb + 1)
    col = np.clip(np.searchsorted(edges, d[x].to_numpy(float), side="right") - 1, 0, nb - 1)
    w = d[weight].to_numpy(float) if weight is not None else np.ones(len(d))
    cells = d.assign(_bin=col, _wv=d[value].to_numpy(float) * w, _w=w)
    total = cells.pivot_table(index=y, columns="_bin", values=["_wv", "_w"], aggfunc="sum")
    grid = total["_wv"] / total["_w"]
    grid = grid.reindex(columns=range(nb)).sort_index()
    if y_levels is not None:
        grid = grid.reindex(index=list(y_levels))
    values = np.ma.masked_invalid(grid.to_numpy(float))
    vmax = float(np.abs(values).max()) or 1.0
    colours = matplotlib.colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # missing: see-through
    extent = (edges[0], edges[-1], -0.5, len(grid.index) - 0.5)
    ax.add_patch(Rectangle((extent[0], extent[2]), extent[1] - extent[0], extent[3] - extent[2],
                           facecolor=MISSING_COLOR, hatch=MISSING_HATCH, edgecolor="0.6", linewidth=0, zorder=0,
                           gid="missing"))
    im = ax.imshow(values, aspect="auto", origin="lower", cmap=colours, vmin=-vmax, vmax=vmax,
                   extent=extent, interpolation="nearest", zorder=1)
    every = max(1, int(np.ceil(len(grid.index) / 12)))  # at most ~12 labels
    ticks = list(range(0, len(grid.index), every))
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(grid.index[i]) for i in ticks])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    a, b = plain(data.attrs.get("view_a", "A")), plain(data.attrs.get("view_b", "B"))
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=label or f"log2({a}/{b})")
    if legend and values.mask.any():
        ax.legend(handles=[missing_patch()], loc="upper left", bbox_to_anchor=(0.0, -0.25), borderaxespad=0.0)
    return ax


def missing_patch() -> Patch:
    """The legend entry of cells nothing was recorded for."""
    return Patch(facecolor=MISSING_COLOR, hatch=MISSING_HATCH, edgecolor="0.6", linewidth=0, label="no data")


def no_data(ax: Axes, why: str = "no data") -> Axes:
    """Mark a panel that has nothing to show: hatched grey over the whole panel (the figures' sign for no
    data) and ``why`` in its middle, never a blank panel a reader could take for zeros."""
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor=MISSING_COLOR, hatch=MISSING_HATCH,
                           edgecolor="0.6", linewidth=0, zorder=0, gid="missing"))
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=7,
            bbox=dict(facecolor="white", edgecolor="none", pad=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def condition_plot(data: pd.DataFrame, *, x: str = "group", y: str, lo: str | None = None, hi: str | None = None,
                   hue: str | None = None, palette: Mapping[str, str] | None = None, ref: float | None = None,
                   ylabel: str | None = None, ax: Axes | None = None, order: Sequence[str] | None = None,
                   x_palette: Mapping[str, str] | None = None, logy: bool = False, orient: str = "v") -> Axes:
    """Compare conditions: a point per ``x`` (and ``hue``) at ``y`` with error bars ``lo``..``hi``
    (rows with a NaN interval get no bar); ``ref`` draws a reference line (e.g. 1 for a ratio). ``order``: the
    ``x`` levels in order (default: as they appear); ``x_palette``: a colour per ``x`` level when there is no
    ``hue`` (the conditions' palette). ``orient="h"`` puts the conditions down the y axis, the first on top
    (a forest plot: long names stay horizontal and readable), the values along x (``ylabel`` then labels x,
    ``logy`` makes x logarithmic). For test AUC, the imbalance ratio or utilization per condition."""
    if orient not in ("v", "h"):
        raise ValueError(f"orient must be 'v' or 'h', got {orient!r}")
    _check(data, x, y, lo, hi, hue)
    ax = _axes(ax)
    flip = orient == "h"
    xs = [v for v in (order if order is not None else view_order(data, x))]
    pos = {v: i for i, v in enumerate(xs)}
    data = data[data[x].astype(str).isin(pos)]
    groups = [(None, data)] if hue is None else [(lev, data[data[hue].astype(str) == lev]) for lev in
                                                view_order(data, hue)]
    palette = _palette(palette, [g for g, _ in groups if g is not None])
    width = 0.6 / max(1, len(groups))
    for k, (lev, sub) in enumerate(groups):
        offset = (k - (len(groups) - 1) / 2) * width
        px = np.array([pos[str(v)] for v in sub[x]], float) + offset
        py = sub[y].to_numpy(float)
        colors = ([palette.get(lev, OKABE_ITO[0])] * len(sub) if lev is not None else
                  [(x_palette or {}).get(str(v), "0.2") for v in sub[x]])
        if lo is not None and hi is not None:
            err = np.vstack([py - sub[lo].to_numpy(float), sub[hi].to_numpy(float) - py])
            err = np.where(np.isfinite(err), err, 0.0)
            for i in range(len(sub)):
                bar = dict(xerr=err[:, i:i + 1]) if flip else dict(yerr=err[:, i:i + 1])
                ax.errorbar(*((py[i:i + 1], px[i:i + 1]) if flip else (px[i:i + 1], py[i:i + 1])), **bar,
                            fmt="none", ecolor=colors[i], capsize=2, linewidth=0.8)
        ax.scatter(*((py, px) if flip else (px, py)), c=colors, s=16, zorder=3,
                   label=plain(lev) if lev is not None else "_points")
    if ref is not None:
        (ax.axvline if flip else ax.axhline)(ref, color="0.6", linewidth=0.5, linestyle="--", zorder=0)
    if logy:
        (ax.set_xscale if flip else ax.set_yscale)("log")
    labels = [plain(v, 24) for v in xs]
    if flip:
        ax.set_yticks(range(len(xs)), labels)
        ax.set_ylim(len(xs) - 0.5, -0.5)  # the first (the reference) on top
        ax.set_ylabel(x)
        ax.set_xlabel(ylabel or y)
    else:
        ax.set_xticks(range(len(xs)))
        crowded = sum(len(v) for v in xs) > 6 * len(xs) + 2  # long names would run into each other
        ax.set_xticklabels(labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel or y)
    if hue is not None:
        legend_outside(ax)
    return ax


def dynamics_facets(data: pd.DataFrame, *, x: str = "step",
                    ys: Sequence[str] = ("grad_norm", "update_norm", "learning_speed", "loss_reduction"),
                    col: str | None = None, hue: str = "view", units: str | None = "run",
                    palette: Mapping[str, str] | None = None, width: str = "double",
                    logy: Sequence[str] = ("grad_norm", "update_norm", "learning_speed"),
                    col_order: Sequence[str] | None = None, row_height: float = 1.6,
                    col_title: str = "{col} = {value}", fit: bool = True) -> Figure:
    """Figure-level: one row per quantity in ``ys``, one column per level of ``col`` (e.g.
    ``condition``, in ``col_order``, titled by ``col_title`` formatted with ``col`` and ``value``), lines per
    ``hue`` with bands or per-run lines over ``units``; shared y
    axis within a row; one legend, outside the data to the right (constrained layout); titles and labels
    wrapped to their panels (:func:`fit_text`; ``fit=False``: left to the caller, who relabels first). A bare
    Figure: pyplot and the backend are not touched."""
    _check(data, x, hue, col, *ys)
    cols = [None] if col is None else list(col_order) if col_order is not None else view_order(data, col)
    levels = view_order(data, hue)
    palette = _palette(palette, levels)
    w, _ = figsize(width)
    fig = new_figure((w, row_height * len(ys)))
    axes = fig.subplots(len(ys), len(cols), sharex=True, sharey="row", squeeze=False)
    for j, c in enumerate(cols):
        sub = data if c is None else data[data[col].astype(str) == c]
        for i, y in enumerate(ys):
            ax = axes[i, j]
            view_lines(sub, x=x, y=y, hue=hue, units=units, palette=palette, logy=y in logy, ax=ax, order=levels,
                       legend=False)
            if c is not None and i == 0:
                ax.set_title(plain(col_title.format(col=col, value=c), 40))
            if j > 0:
                ax.set_ylabel("")
            if i < len(ys) - 1:
                ax.set_xlabel("")
    handles = [Line2D([], [], color=palette.get(v), label=plain(v)) for v in levels]
    fig.legend(handles=handles, loc="outside right upper")
    return fit_text(fig) if fit else fig
