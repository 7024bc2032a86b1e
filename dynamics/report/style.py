"""The one style of every figure: sizes, fonts, colour palettes and saving.

Sizes for a single and a double journal column (:data:`SIZES`), a style context (:func:`publication_style`:
fonts embedded as TrueType in PDFs, no text under 7 pt), one colour per view (:func:`view_palette`: Okabe-Ito
colours, colour-blind safe, ``shared`` grey), :func:`new_figure` (a bare :class:`~matplotlib.figure.Figure` on an
Agg canvas: pyplot and the user's backend are never touched), :func:`fit_text` (titles and axis labels wrapped
to their panels) and :func:`save_figure` (vector PDF and 300-dpi PNG).
"""
from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..schema import SHARED

__all__ = ["SIZES", "OKABE_ITO", "SHARED_COLOR", "CONDITION_COLORS", "MISSING_COLOR", "MISSING_HATCH", "ROW_HEIGHT",
           "STYLE", "TALLEST", "publication_style", "figsize", "report_figsize", "view_palette",
           "condition_palette", "plain", "new_figure", "fit_text", "save_figure"]

#: inches: one journal column and two (the full text width)
SIZES = {"single": (3.5, 2.6), "double": (7.0, 3.0)}
#: inches: the tallest figure, a page less its caption; figures of many rows get shorter rows
TALLEST = 9.0
#: Okabe & Ito (2008) colour-blind-safe colours, in the order views receive them.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
SHARED_COLOR = "#7F7F7F"
#: conditions get colours of their own (Paul Tol's "muted" scheme, colour-blind safe, none an Okabe-Ito colour),
#: so a condition is never mistaken for a view
CONDITION_COLORS = ("#332288", "#117733", "#AA4499", "#88CCEE", "#999933", "#CC6677", "#44AA99", "#882255",
                    "#DDCC77")
#: cells nothing was recorded for (a heatmap bin without a step): light grey, hatched, never a data colour
MISSING_COLOR = "#E8E8E8"
MISSING_HATCH = "////"
#: every report figure is a full page width and a whole number of rows of this height (one size family)
ROW_HEIGHT = 2.0
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.linewidth": 0.6, "lines.linewidth": 1.2, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "savefig.bbox": "tight", "savefig.dpi": 300, "pdf.fonttype": 42, "ps.fonttype": 42,
    "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
}


@contextlib.contextmanager
def publication_style() -> Iterator[None]:
    """Context in which figures use the package style (fonts embedded as TrueType in PDFs)."""
    with matplotlib.rc_context(STYLE):
        yield


def figsize(width: str = "single", aspect: float | None = None) -> tuple[float, float]:
    """(width, height) in inches for ``"single"`` or ``"double"`` column; ``aspect`` = height/width."""
    if width not in SIZES:
        raise ValueError(f"width must be one of {list(SIZES)}, got {width!r}")
    w, h = SIZES[width]
    return (w, w * aspect) if aspect else (w, h)


def report_figsize(rows: int = 1) -> tuple[float, float]:
    """The report's one size family: double-column width, ``rows`` rows of :data:`ROW_HEIGHT`, at most
    :data:`TALLEST` in all (many rows share the page)."""
    return SIZES["double"][0], min(ROW_HEIGHT * max(1, rows), TALLEST)


def new_figure(size: tuple[float, float], *, layout: str | None = "constrained") -> Figure:
    """A figure of ``size`` inches drawn on its own Agg canvas: neither pyplot's figure list nor the backend the
    user chose is touched (a notebook keeps its inline plots), and ``fig.savefig`` works as usual."""
    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _wrapped(t: Text, fits, renderer) -> bool:
    """Re-break ``t``'s words into shorter lines until ``fits(extent)`` (at most 8 characters a line); whether
    the text changed."""
    words = " ".join(t.get_text().split("\n"))
    before = t.get_text()
    for width in range(max(len(words) - 1, 8), 7, -1):
        if fits(t.get_window_extent(renderer)):
            break
        t.set_text(textwrap.fill(words, width, break_on_hyphens=True, break_long_words=False))
    return t.get_text() != before


def _fit_axes(fig: Figure, renderer, box_of) -> bool:
    """One pass of :func:`fit_text` with each panel's box from ``box_of(ax)``; whether any text changed."""
    changed = False
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        box = box_of(ax)
        for t in (ax.title, ax.xaxis.label):
            if t.get_text():
                changed |= _wrapped(t, lambda e, w=box.width: e.width <= w + 1, renderer)
        if ax.yaxis.label.get_text():
            changed |= _wrapped(ax.yaxis.label, lambda e, h=box.height: e.height <= h + 1, renderer)
    return changed


def fit_text(fig: Figure, passes: int = 3) -> Figure:
    """Titles and x labels wrapped to their panel's width, y labels to its height, so that no label runs into
    its neighbour's or off the canvas. A first guess from the panels' places before layout (four fifths of
    their grid cell), then measured after the layout engine placed them, again after each change (wrapping
    moves them), at most ``passes`` layouts (each costs a draw)."""
    renderer = fig.canvas.get_renderer()
    _fit_axes(fig, renderer, lambda ax: ax.get_position().transformed(fig.transFigure).expanded(0.8, 0.8))
    for _ in range(passes):
        fig.draw_without_rendering()
        if not _fit_axes(fig, renderer, lambda ax: ax.get_window_extent(renderer)):
            break
    return fig


def plain(name: object, most: int | None = None) -> str:
    """A user's name as figure text that matplotlib draws as it is (``$`` never starts mathtext, newlines are
    spaces); ``most``: at most that many characters (an ellipsis marks the cut), for tick labels and titles."""
    text = " ".join(str(name).splitlines())
    if most is not None and len(text) > most:
        text = text[:most - 1] + "…"
    return text.replace("$", r"\$")


def condition_palette(conditions: Sequence[str]) -> dict[str, str]:
    """One colour per condition, in the order given, from :data:`CONDITION_COLORS` (distinct from the views')."""
    return {str(c): CONDITION_COLORS[i % len(CONDITION_COLORS)] for i, c in enumerate(dict.fromkeys(map(str, conditions)))}


def view_palette(views: Sequence[str] | pd.Series, shared: str = SHARED) -> dict[str, str]:
    """Fixed colour per view: views take Okabe-Ito colours in their order, ``shared`` is grey.

    Pass the views in their declared order (``dynamics.analysis.view_order``) so that a view has the
    same colour in every figure of a report.
    """
    if isinstance(views, pd.Series):
        views = list(views.cat.categories) if isinstance(views.dtype, pd.CategoricalDtype) else list(
            dict.fromkeys(views))
    out, i = {}, 0
    for v in map(str, views):
        if v in out:
            continue
        if v == shared:
            out[v] = SHARED_COLOR
        else:
            out[v] = OKABE_ITO[i % len(OKABE_ITO)]
            i += 1
    return out


def save_figure(fig: Figure, path: str | os.PathLike, *, formats: Sequence[str] = ("pdf", "png"),
                dpi: int = 300, tight: bool = True) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats`` (PDF vector, PNG at ``dpi``). ``tight``: crop to
    the drawn content; False keeps the figure's own size (the report's figures, laid out to fit)."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix.lstrip(".") in formats else base
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        p = base.with_name(f"{base.name}.{fmt}")
        fig.savefig(p, format=fmt, dpi=dpi, bbox_inches="tight" if tight else fig.bbox_inches)
        out.append(p)
    return out
