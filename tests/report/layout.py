"""Small recorded sweeps for the figure tests, and what a journal's figure checker would reject in a drawn
figure: overlapping text, text off the canvas, text under 7 pt, hidden or empty panels, legends on data."""
from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

import dynamics
from dynamics.analysis.utilization import save_utilization
from tests.report.models import Columns

#: the digits sweep's condition names (long, hyphenated: what ran together in its figures)
CONDITIONS = ("separate", "rebalance-random", "dropout-0.25", "shared", "dropout-0.5", "rebalance")
VIEWS = {2: ("colour", "grey"), 5: ("camera", "lidar", "radar", "sonar", "thermal")}
SMALLEST_PT = 7.0
WIDTHS = (3.5, 7.0)  # one and two journal columns, inches
TALLEST = 9.0        # inches: a page less its caption


def record_run(out: Path, *, seed: int, condition: str, views: tuple[str, ...], steps: int = 10) -> Path:
    """One run: views' inputs at different scales; the conditions named dropout-/rebalance log the decisions
    modality dropout and re-balancing log (present counts, re-balanced flags); test metrics and utilization."""
    torch.manual_seed(seed)
    model = Columns(len(views))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs = [torch.randn(16, 4) * (i + 1) for i in range(len(views))]
    y = (xs[0][:, 0] > 0).float()
    with dynamics.attach(model, opt, views={v: model.cols[i] for i, v in enumerate(views)}, out=out, seed=seed,
                         condition=condition) as rec:
        for t in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs), y)
            loss.backward()
            opt.step()
            if condition.startswith("dropout"):
                rec.log(**{f"present_{v}": float(16 - (t + i) % 4) for i, v in enumerate(views)})
            if condition.startswith("rebalance"):
                rec.log(**{f"rebalanced_{v}": float((t + i) % len(views) == 0) for i, v in enumerate(views)})
        rec.log(test_auc=0.8 + seed / 100, test_acc=0.7 + seed / 50)
    base = 0.9
    save_utilization(pd.DataFrame({"view": list(views), "metric": "auc", "with_view": base,
                                   "without_view": [base - 0.05 * (i + 1) for i in range(len(views))],
                                   "ablate": "zero"}), out)
    return out


def record_sweep(tmp: Path, n_conditions: int, n_views: int, seeds: int = 2) -> list[Path]:
    """``seeds`` runs of each of the first ``n_conditions`` conditions, ``n_views`` views each."""
    return [record_run(tmp / f"{c}-s{s}", seed=s, condition=c, views=VIEWS[n_views])
            for c in CONDITIONS[:n_conditions] for s in range(seeds)]


@contextlib.contextmanager
def drawn_texts(fig: Figure):
    """Draw ``fig`` and collect every text drawn with its box in pixels (only what is drawn: tick labels
    outside the view limits and texts of hidden artists are skipped, as on the page)."""
    seen: list[tuple[Text, object]] = []
    original = Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.append((self, self.get_window_extent(renderer)))

    with mock.patch.object(Text, "draw", draw):
        fig.canvas.draw()
    yield seen


def _overlap(a, b, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _name(t: Text) -> str:
    return repr(t.get_text()[:30])


def layout_problems(fig: Figure) -> list[str]:
    """Every defect found in ``fig`` as drawn, in words (empty: the figure is fit to print)."""
    problems = []
    w, h = fig.get_size_inches()
    if not any(abs(w - ok) < 1e-6 for ok in WIDTHS):
        problems.append(f"width {w:.2f} in is neither one nor two columns {WIDTHS}")
    if h > TALLEST + 1e-6:
        problems.append(f"height {h:.2f} in is taller than a page ({TALLEST} in)")
    with drawn_texts(fig) as texts:
        pass
    canvas = fig.bbox
    renderer = fig.canvas.get_renderer()
    for t, box in texts:
        if t.get_fontsize() < SMALLEST_PT - 1e-6:
            problems.append(f"text {_name(t)} at {t.get_fontsize():.1f} pt (< {SMALLEST_PT})")
        if box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1 or box.y1 > canvas.y1 + 1:
            problems.append(f"text {_name(t)} is cut by the canvas edge")
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1:]:
            if _overlap(box_a, box_b):
                problems.append(f"texts {_name(a)} and {_name(b)} overlap")
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    areas = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if any(_overlap(box, area) for area in areas):
            problems.append("a legend lies on a panel")
        mine = {id(x) for x in legend.get_texts()} | {id(legend.get_title())}
        for t, tbox in texts:
            if id(t) not in mine and _overlap(box, tbox):
                problems.append(f"a legend lies on the text {_name(t)}")
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible():
            problems.append(f"panel {k} is left blank (hidden axes)")
        elif not ax.has_data():
            problems.append(f"panel {k} ({ax.get_title()!r}) is empty")
    return list(dict.fromkeys(problems))


def assert_fit(name: str, fig: Figure) -> None:
    """Fail with every defect of the figure listed."""
    problems = layout_problems(fig)
    assert not problems, f"{name}: " + "; ".join(problems[:12]) + (f" (+{len(problems) - 12} more)"
                                                                    if len(problems) > 12 else "")


__all__ = ["CONDITIONS", "VIEWS", "record_run", "record_sweep", "layout_problems", "assert_fit", "drawn_texts"
           ]
