"""dynamics.plots on the Agg backend: asserted on artists (lines, labels, colours), not pixels."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from dynamics import plots  # noqa: E402
from dynamics.report.plots import _mean_band  # noqa: E402


def vd_table(n_runs=2):
    """grad_norm = 1 + run index (a), 0.5 (b), 0.1 (shared); steps 0..4."""
    rows = []
    for r in range(n_runs):
        for step in range(5):
            for v, g, share in (("a", 1.0 + r, 0.6), ("b", 0.5, 0.3), ("shared", 0.1, 0.1)):
                rows.append(dict(run=f"r{r}", condition="c0" if r == 0 else "c1", step=step, view=v, grad_norm=g,
                                 update_norm=g / 10, learning_speed=g, loss_reduction=step * g, share=share))
    df = pd.DataFrame(rows)
    df["view"] = pd.Categorical(df["view"], categories=["a", "b", "shared"])
    return df


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_view_palette_fixed_and_shared_grey():
    pal = plots.view_palette(["cc", "shared", "mlo"])
    assert pal == {"cc": plots.OKABE_ITO[0], "shared": plots.SHARED_COLOR, "mlo": plots.OKABE_ITO[1]}
    assert plots.view_palette(vd_table()["view"]) == {"a": plots.OKABE_ITO[0], "b": plots.OKABE_ITO[1],
                                                     "shared": plots.SHARED_COLOR}


def test_figsize():
    assert plots.figsize("single") == plots.SIZES["single"]
    assert plots.figsize("double", aspect=0.5) == (7.0, 3.5)
    with pytest.raises(ValueError, match="width"):
        plots.figsize("triple")


def test_mean_band_t_interval_over_units_clipped_to_their_range():
    d = pd.DataFrame({"run": [f"r{i}" for i in range(10)], "step": 0, "y": np.arange(1.0, 11.0)})
    m = _mean_band(d, "step", "y", "run", 0.95).iloc[0]
    half = 2.2621571627409915 * np.std(np.arange(1.0, 11.0), ddof=1) / np.sqrt(10)  # t(0.975, 9)
    assert m["mean"] == 5.5 and m["lo"] == pytest.approx(5.5 - half) and m["hi"] == pytest.approx(5.5 + half)
    two = _mean_band(d.iloc[:2], "step", "y", "run", 0.95).iloc[0]  # n = 2: no interval (values only)
    assert np.isnan(two["lo"]) and np.isnan(two["hi"])


def test_few_runs_draw_each_run_not_a_band():
    data = vd_table(2)
    with plots.publication_style():
        ax = plots.grad_norm_plot(data)
    means = [ln for ln in ax.lines if ln.get_gid() != "run"]
    assert [ln.get_label() for ln in means] == ["a", "b", "shared"]
    pal = plots.view_palette(["a", "b", "shared"])
    assert [to_hex(ln.get_color()) for ln in means] == [pal["a"].lower(), pal["b"].lower(), pal["shared"].lower()]
    assert np.allclose(means[0].get_ydata(), np.sqrt(2.0))  # geometric mean of 1 and 2 (log axis)
    runs = [ln for ln in ax.lines if ln.get_gid() == "run"]
    assert len(runs) == 6 and len(ax.collections) == 0  # 2 runs x 3 views, no band
    assert sorted({float(ln.get_ydata()[0]) for ln in runs if to_hex(ln.get_color()) == pal["a"].lower()}) == [1.0, 2.0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "shared"]


def test_many_runs_get_a_geometric_band_inside_the_runs_range():
    data = vd_table(6)
    ax = plots.grad_norm_plot(data)
    assert len(ax.collections) == 3 and not [ln for ln in ax.lines if ln.get_gid() == "run"]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 1.0 - 1e-9 and band.max() <= 6.0 + 1e-9  # view a's runs span 1..6
    assert band.min() > 0


def test_single_run_has_no_band():
    ax = plots.grad_norm_plot(vd_table(1))
    assert len(ax.lines) == 3 and len(ax.collections) == 0


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="grad_norm"):
        plots.grad_norm_plot(vd_table().drop(columns="grad_norm"))


def test_loss_reduction_plot():
    ax = plots.loss_reduction_plot(vd_table(1))
    a = ax.lines[0]
    assert a.get_label() == "a" and list(a.get_ydata()) == [0, 1, 2, 3, 4]


def test_share_area_plot_stacks_with_view_colours():
    ax = plots.share_area_plot(vd_table(2))
    assert len(ax.collections) == 3
    pal = plots.view_palette(["a", "b", "shared"])
    got = [to_hex(c.get_facecolor()[0], keep_alpha=False) for c in ax.collections]
    assert got == [pal[v].lower() for v in ("a", "b", "shared")]
    # top of the stack is 0.6 + 0.3 + 0.1 = 1
    top = ax.collections[2].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(1.0)


def test_ratio_heatmap_bins_hand_values():
    d = pd.DataFrame({"step": [0, 1, 2, 3] * 2, "depth": [0] * 4 + [1] * 4,
                      "log2_ratio": [0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -3.0, -3.0]})
    d.attrs.update(view_a="cc", view_b="mlo")
    ax = plots.ratio_heatmap(d, bins=2)
    arr = ax.images[0].get_array()
    assert arr.shape == (2, 2)
    assert np.allclose(arr, [[0.5, 2.5], [-1.0, -3.0]])
    assert ax.images[0].get_clim() == (-3.0, 3.0)
    assert ax.figure.axes[-1].get_ylabel() == "log2(cc/mlo)"


def _points(ax):
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def test_condition_plot_error_bars_order_and_nan_interval():
    s = pd.DataFrame({"group": ["base", "shared"], "grad_ratio": [2.0, 1.1], "lo": [1.5, np.nan],
                      "hi": [2.5, np.nan]})
    ax = plots.condition_plot(s, y="grad_ratio", lo="lo", hi="hi", ref=1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "shared"]
    assert _points(ax)[0].get_offsets()[:, 1].tolist() == [2.0, 1.1]
    bars = [c.get_segments()[0][:, 1].tolist() for c in ax.collections if isinstance(c, LineCollection)]
    assert bars == [[1.5, 2.5], [1.1, 1.1]]
    plt.figure()
    pal = plots.condition_palette(["shared", "base"])
    ax = plots.condition_plot(s, y="grad_ratio", order=["shared", "base"], x_palette=pal)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shared", "base"]
    pts = _points(ax)[0]
    assert pts.get_offsets()[:, 0].tolist() == [1.0, 0.0]  # base sits second
    assert [to_hex(c) for c in pts.get_facecolor()] == [pal["base"].lower(), pal["shared"].lower()]


def test_condition_plot_hue_colours_by_view():
    s = pd.DataFrame({"group": ["base", "base"], "view": ["cc", "mlo"], "u": [0.3, 0.1]})
    ax = plots.condition_plot(s, y="u", hue="view")
    assert [p.get_label() for p in _points(ax)] == ["cc", "mlo"]
    assert to_hex(_points(ax)[1].get_facecolor()[0]) == plots.OKABE_ITO[1].lower()


def test_condition_palette_is_not_the_view_palette():
    assert not set(map(str.lower, plots.CONDITION_COLORS)) & set(map(str.lower, plots.OKABE_ITO + (plots.SHARED_COLOR,)))
    assert list(plots.condition_palette(["b", "a", "b"])) == ["b", "a"]


def test_ratio_heatmap_shows_unrecorded_cells_as_missing():
    # bins of width 1.8 over steps 0..9: {0, 1}, {2}, -, -, {8, 9}; depth 1 recorded at steps 0 and 1 only
    d = pd.DataFrame({"step": [0, 1, 2, 8, 9, 0, 1], "depth": [0, 0, 0, 0, 0, 1, 1],
                      "log2_ratio": [1.0, 1.0, 2.0, 2.0, 2.0, -1.0, -1.0]})
    ax = plots.ratio_heatmap(d, bins=5, colorbar=False, y_levels=[0, 1, 2])
    arr = ax.images[0].get_array()
    assert arr.shape == (3, 5)
    assert arr.mask.tolist() == [[False, False, True, True, False], [False, True, True, True, True], [True] * 5]
    assert ax.images[0].get_cmap().get_bad()[3] == 0.0  # masked cells are see-through ...
    hatch = [p for p in ax.patches if p.get_gid() == "missing"]
    assert hatch and hatch[0].get_hatch() and to_hex(hatch[0].get_facecolor()) == plots.MISSING_COLOR.lower()
    assert hatch[0].zorder < ax.images[0].zorder  # ... onto the hatched background, never the white of ratio 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no data"]


def test_names_with_dollar_signs_are_drawn_as_text(tmp_path):
    s = pd.DataFrame({"group": ["$\\alpha_{$", "b"], "y": [1.0, 2.0]})
    ax = plots.condition_plot(s, y="y")
    assert ax.get_xticklabels()[0].get_text() == r"\$\alpha_{\$"
    ax.figure.savefig(tmp_path / "f.png")  # as mathtext, "$\alpha_{$" does not parse: savefig would raise


def test_dynamics_facets_grid():
    fig = plots.dynamics_facets(vd_table(2), col="condition", ys=("grad_norm", "loss_reduction"))
    axes = fig.axes
    assert len(axes) == 4
    assert axes[0].get_title() == "condition = c0" and axes[1].get_title() == "condition = c1"
    assert all(len([ln for ln in ax.lines if ln.get_gid() != "run"]) == 3 for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "shared"]


def test_save_figure_pdf_and_png_300dpi(tmp_path):
    fig, ax = plt.subplots(figsize=(1.0, 1.0))
    ax.plot([0, 1])
    paths = plots.save_figure(fig, tmp_path / "fig")
    assert [p.name for p in paths] == ["fig.pdf", "fig.png"]
    assert paths[0].read_bytes()[:4] == b"%PDF"
    fig.savefig(tmp_path / "ref.png", dpi=100, bbox_inches="tight")
    ratio = plt.imread(paths[1]).shape[0] / plt.imread(tmp_path / "ref.png").shape[0]
    assert ratio == pytest.approx(3.0, rel=0.05)  # 300 dpi


def test_axes_level_plots_fit_one_journal_column():
    """Each axes-level plot on a one-column figure (3.5 in) in the package style, its legend outside: no text
    under 7 pt, none cut or overlapping, no legend on the data (long condition names down the y axis)."""
    from .layout import assert_fit
    data = vd_table(6)
    conds = pd.DataFrame({"group": ["separate", "rebalance-random", "dropout-0.25"], "r": [1.2, 0.8, 2.0],
                          "lo": [1.0, 0.6, 1.5], "hi": [1.5, 1.1, 2.6]})
    cells = pd.DataFrame({"step": [0, 1, 2, 3] * 2, "depth": [0] * 4 + [1] * 4,
                          "log2_ratio": [0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -3.0, -3.0]})
    draws = {"grad_norm_plot": lambda ax: plots.grad_norm_plot(data, ax=ax),
             "share_area_plot": lambda ax: plots.share_area_plot(data, ax=ax),
             "ratio_heatmap": lambda ax: plots.ratio_heatmap(cells, bins=2, ax=ax),
             "condition_plot": lambda ax: plots.condition_plot(conds, y="r", lo="lo", hi="hi", ref=1.0, orient="h",
                                                               ylabel="colour/grey ratio of mean norms", ax=ax,
                                                               x_palette=plots.condition_palette(conds["group"]))}
    with plots.publication_style():
        for name, draw in draws.items():
            fig = plots.new_figure(plots.figsize("single"))
            draw(fig.add_subplot())
            assert_fit(name, plots.fit_text(fig))
