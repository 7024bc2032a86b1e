"""Publication figures of per-view training dynamics, in the seaborn calling style.

Axes-level functions take ``data=`` first, keyword-only column names and ``ax=``, and return the
Axes; :func:`dynamics_facets` is the figure-level function that facets. All use the one style of
:mod:`dynamics.report.style` (re-exported here: :func:`publication_style`, :data:`SIZES`,
:func:`view_palette`, :func:`save_figure`).
Inputs are the tables from :mod:`dynamics.analysis` (``view_dynamics``, ``matched_depth``,
``imbalance_summary``...).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analysis.cleaning import check_columns, view_order
from ..analysis.metrics import t_half_width
from .style import (OKABE_ITO, SHARED_COLOR, SIZES, STYLE, figsize, publication_style, save_figure,  # noqa: F401
                    view_palette)

__all__ = ["SIZES", "OKABE_ITO", "SHARED_COLOR", "STYLE", "publication_style", "figsize", "view_palette",
           "view_lines", "grad_norm_plot", "loss_reduction_plot", "share_area_plot", "ratio_heatmap",
           "condition_plot", "dynamics_facets", "save_figure"]


def _check(data: pd.DataFrame, *columns: str | None) -> None:
    """``check_columns`` for the named columns (``None``: an optional column not asked for)."""
    check_columns(data, [c for c in columns if c is not None], "data")


def _palette(palette: Mapping[str, str] | None, levels: Sequence[str]) -> dict[str, str]:
    """The palette given (copied), else :func:`view_palette` of ``levels``."""
    return dict(palette) if palette is not None else view_palette(levels)


def _mean_band(data: pd.DataFrame, x: str, y: str, units: str | None, level: float) -> pd.DataFrame:
    """Mean of ``y`` over units at each ``x`` with a t-interval of the mean (NaN for one unit)."""
    if units is not None and units in data.columns:
        per_unit = data.groupby([units, x], observed=True)[y].mean().reset_index()
    else:
        per_unit = data[[x, y]]
    g = per_unit.groupby(x, observed=True)[y]
    out = g.agg(["mean", "std", "count"])
    half = t_half_width(out["std"].to_numpy(), out["count"].to_numpy(float), level)
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out.reset_index()


def view_lines(data: pd.DataFrame, *, x: str = "step", y: str, hue: str = "view", units: str | None = "run",
               palette: Mapping[str, str] | None = None, band: bool = True, level: float = 0.95,
               logy: bool = False, ylabel: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """One line per ``hue`` level: the mean of ``y`` over ``units`` (seeds) at each ``x``, with a
    ``level`` t-interval band when there are two or more units. With ``logy`` the mean and band are
    taken on log(y) (a geometric mean), so the band stays positive and symmetric on the log axis."""
    _check(data, x, y, hue)
    ax = ax if ax is not None else plt.gca()
    levels = view_order(data, hue)
    palette = _palette(palette, levels)
    for lev in levels:
        sub = data[data[hue].astype(str) == lev]
        if logy:
            sub = sub[sub[y] > 0].assign(**{y: lambda d: np.log(d[y])})
        m = _mean_band(sub, x, y, units, level)
        if logy:
            m = m.assign(**{c: np.exp(m[c]) for c in ("mean", "lo", "hi")})
        color = palette.get(lev)
        ax.plot(m[x], m["mean"], color=color, label=lev)
        if band and m["lo"].notna().any():
            ax.fill_between(m[x], m["lo"], m["hi"], color=color, alpha=0.25, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.legend(title=None)
    return ax


def grad_norm_plot(data: pd.DataFrame, *, x: str = "step", y: str = "grad_norm", hue: str = "view",
                   units: str | None = "run", palette: Mapping[str, str] | None = None,
                   ax: plt.Axes | None = None) -> plt.Axes:
    """Gradient norm per view over steps (mean and 95% band over seeds), log scale."""
    return view_lines(data, x=x, y=y, hue=hue, units=units, palette=palette, logy=True,
                      ylabel="gradient norm ‖g‖", ax=ax)


def loss_reduction_plot(data: pd.DataFrame, *, x: str = "step", y: str = "loss_reduction", hue: str = "view",
                        units: str | None = "run", palette: Mapping[str, str] | None = None,
                        ax: plt.Axes | None = None) -> plt.Axes:
    """Cumulative loss reduction −Σ lca per view over steps (mean and 95% band over seeds)."""
    ax = view_lines(data, x=x, y=y, hue=hue, units=units, palette=palette, ylabel="cumulative loss reduction",
                    ax=ax)
    ax.axhline(0.0, color="0.6", linewidth=0.5, zorder=0)
    return ax


def share_area_plot(data: pd.DataFrame, *, x: str = "step", y: str = "share", hue: str = "view",
                    palette: Mapping[str, str] | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """Each view's share of the cumulative loss reduction as a stacked area (mean over runs)."""
    _check(data, x, y, hue)
    ax = ax if ax is not None else plt.gca()
    levels = view_order(data, hue)
    palette = _palette(palette, levels)
    wide = data.assign(**{hue: data[hue].astype(str)}).pivot_table(index=x, columns=hue, values=y,
                                                                    aggfunc="mean", observed=True)
    wide = wide.reindex(columns=levels).dropna(how="all")
    ax.stackplot(wide.index.to_numpy(), *[wide[lev].fillna(0.0).to_numpy() for lev in levels], labels=levels,
                 colors=[palette.get(lev) for lev in levels], alpha=0.85, linewidth=0)
    ax.set_xlabel(x)
    ax.set_ylabel("share of loss reduction")
    ax.legend(loc="lower right")
    return ax


def ratio_heatmap(data: pd.DataFrame, *, x: str = "step", y: str = "depth", value: str = "log2_ratio",
                  bins: int = 40, ax: plt.Axes | None = None, cmap: str = "RdBu_r",
                  label: str | None = None, colorbar: bool = True) -> plt.Axes:
    """Matched-layer ratio as a heatmap: ``y`` (depth) × ``x`` (steps cut into ``bins`` equal bins),
    the mean of ``value`` over runs and the steps of a bin, on a diverging scale centred at 0 (± the largest
    magnitude drawn; ``ax.images[0].set_clim`` puts several panels on one scale)."""
    _check(data, x, y, value)
    ax = ax if ax is not None else plt.gca()
    d = data[np.isfinite(data[value].to_numpy(float))]
    if d.empty:
        raise ValueError(f"no finite values in column {value!r} to draw")
    lo, hi = float(d[x].min()), float(d[x].max())
    nb = int(max(1, min(bins, d[x].nunique())))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, nb + 1)
    col = np.clip(np.searchsorted(edges, d[x].to_numpy(float), side="right") - 1, 0, nb - 1)
    grid = d.assign(_bin=col).pivot_table(index=y, columns="_bin", values=value, aggfunc="mean")
    grid = grid.reindex(columns=range(nb)).sort_index()
    vmax = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap=cmap, vmin=-vmax, vmax=vmax,
                   extent=(edges[0], edges[-1], -0.5, len(grid.index) - 0.5), interpolation="nearest")
    every = max(1, int(np.ceil(len(grid.index) / 12)))  # at most ~12 labels
    ticks = list(range(0, len(grid.index), every))
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(grid.index[i]) for i in ticks])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    a, b = data.attrs.get("view_a", "A"), data.attrs.get("view_b", "B")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=label or f"log2({a}/{b})")
    return ax


def condition_plot(data: pd.DataFrame, *, x: str = "group", y: str, lo: str | None = None, hi: str | None = None,
                   hue: str | None = None, palette: Mapping[str, str] | None = None, ref: float | None = None,
                   ylabel: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """Compare conditions: a point per ``x`` (and ``hue``) at ``y`` with error bars ``lo``..``hi``
    (rows with a NaN interval get no bar); ``ref`` draws a horizontal reference line (e.g. 1 for a
    ratio). For test AUC, the imbalance ratio or utilization per condition."""
    _check(data, x, y, lo, hi, hue)
    ax = ax if ax is not None else plt.gca()
    xs = view_order(data, x)
    pos = {v: i for i, v in enumerate(xs)}
    groups = [(None, data)] if hue is None else [(lev, data[data[hue].astype(str) == lev]) for lev in
                                                view_order(data, hue)]
    palette = _palette(palette, [g for g, _ in groups if g is not None])
    width = 0.6 / max(1, len(groups))
    for k, (lev, sub) in enumerate(groups):
        offset = (k - (len(groups) - 1) / 2) * width
        px = np.array([pos[str(v)] for v in sub[x]], float) + offset
        py = sub[y].to_numpy(float)
        color = palette.get(lev, OKABE_ITO[0]) if lev is not None else OKABE_ITO[0]
        if lo is not None and hi is not None:
            err = np.vstack([py - sub[lo].to_numpy(float), sub[hi].to_numpy(float) - py])
            ax.errorbar(px, py, yerr=np.where(np.isfinite(err), err, 0.0), fmt="none", ecolor=color, capsize=2,
                        linewidth=0.8)
        ax.plot(px, py, "o", color=color, label=lev if lev is not None else y, markersize=4, linestyle="none")
    if ref is not None:
        ax.axhline(ref, color="0.6", linewidth=0.5, linestyle="--", zorder=0)
    ax.set_xticks(range(len(xs)))
    crowded = sum(len(v) for v in xs) > 6 * len(xs) + 2  # long names would run into each other
    ax.set_xticklabels(xs, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    if hue is not None:
        ax.legend()
    return ax


def dynamics_facets(data: pd.DataFrame, *, x: str = "step",
                    ys: Sequence[str] = ("grad_norm", "update_norm", "learning_speed", "loss_reduction"),
                    col: str | None = None, hue: str = "view", units: str | None = "run",
                    palette: Mapping[str, str] | None = None, width: str = "double",
                    logy: Sequence[str] = ("grad_norm", "update_norm", "learning_speed")) -> plt.Figure:
    """Figure-level: one row per quantity in ``ys``, one column per level of ``col`` (e.g.
    ``condition``), lines per ``hue`` with bands over ``units``; shared y axis within a row."""
    _check(data, x, hue, col, *ys)
    cols = [None] if col is None else view_order(data, col)
    palette = _palette(palette, view_order(data, hue))
    w, _ = figsize(width)
    fig, axes = plt.subplots(len(ys), len(cols), figsize=(w, 1.6 * len(ys)), sharex=True, sharey="row",
                             squeeze=False)
    for j, c in enumerate(cols):
        sub = data if c is None else data[data[col].astype(str) == c]
        for i, y in enumerate(ys):
            ax = axes[i, j]
            view_lines(sub, x=x, y=y, hue=hue, units=units, palette=palette, logy=y in logy, ax=ax)
            if ax.get_legend() is not None and not (i == 0 and j == len(cols) - 1):
                ax.get_legend().remove()
            if c is not None and i == 0:
                ax.set_title(f"{col} = {c}")
            if j > 0:
                ax.set_ylabel("")
            if i < len(ys) - 1:
                ax.set_xlabel("")
    fig.tight_layout()
    return fig
