"""The report on any valid run: N views, few seeds, no logged scalars, runs of different lengths and view sets;
its statistics over runs and its figures checked on their artists (Agg)."""
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

import dynamics  # noqa: E402
from dynamics import cli, report  # noqa: E402
from dynamics.report import panels  # noqa: E402
from dynamics.report.style import (CONDITION_COLORS, OKABE_ITO, ROW_HEIGHT, SIZES, TALLEST,  # noqa: E402
                                   publication_style)
from tests.report.models import Columns  # noqa: E402


def record(out, *, seed, condition, n_views=2, steps=8, log=True, scale=1.0):
    torch.manual_seed(seed)
    model = Columns(n_views)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs = [torch.randn(16, 4) * (scale if i == 0 else 1.0) * (i + 1) for i in range(n_views)]
    y = (xs[0][:, 0] > 0).float()
    rec = dynamics.attach(model, opt, views={f"v{i}": model.cols[i] for i in range(n_views)}, out=out, seed=seed,
                          condition=condition)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs), y)
        loss.backward()
        opt.step()
        if log:
            rec.log(loss=loss.detach())
    if log:
        rec.log(test_auc=0.8 + seed / 100 + (0.01 if condition == "A" else 0.0))
    rec.close()
    return out


@pytest.fixture(scope="module")
def three_view_runs(tmp_path_factory):
    """Condition B (given first; seeds 0-2, 8-10 steps) and A (seeds 0-2), three views each."""
    tmp = tmp_path_factory.mktemp("three")
    b = [record(tmp / f"B-s{s}", seed=s, condition="B", n_views=3, steps=8 + s) for s in range(3)]
    a = [record(tmp / f"A-s{s}", seed=s, condition="A", n_views=3, scale=3.0) for s in range(3)]
    return b + a


@pytest.fixture(scope="module")
def three_view_numbers(three_view_runs):
    """B's runs are 8, 9 and 10 steps long (two a tenth away from the median: flagged); kept here."""
    return report.ReportNumbers(report.load_report_data(three_view_runs, progress=False), baseline="B",
                                include_flagged=True)


def test_three_views_every_pair_in_one_order(three_view_numbers):
    nums = three_view_numbers
    s = nums.summary
    assert nums.groups == ["B", "A"] and nums.reference == "B"  # as given, the reference first
    assert list(dict.fromkeys(s["group"])) == ["B", "A"] and list(dict.fromkeys(nums.shares["group"])) == ["B", "A"]
    overall = s[s["phase"] == "all"]
    assert [tuple(p) for p in overall[overall["group"] == "B"][["view_a", "view_b"]].to_numpy()] == [
        ("v0", "v1"), ("v0", "v2"), ("v1", "v2")]
    shares = nums.shares[nums.shares["phase"] == "all"]
    assert set(shares["view"]) == {"v0", "v1", "v2", "shared"}
    # each pair row names one of its own two views as the leader, or neither
    assert all(r.leads in (r.view_a, r.view_b, "neither") for r in overall.itertuples())
    # runs of different lengths: each run's own steps
    assert nums.exclusions.set_index("run").loc["B-s2", "recorded_steps"] == 10


def test_three_run_report_cannot_claim_significance(three_view_numbers):
    nums = three_view_numbers
    assert (nums.summary["p"] >= 0.25).all() and (nums.summary["p_min"] == 0.25).all()
    text = report.findings(nums.summary, shares=nums.shares, comparisons=nums.comparisons)
    layer = [t for t in text if "matched layers" in t]
    assert len(layer) == 6  # 3 pairs x 2 conditions
    for sentence in layer:
        assert "a description, not a test" in sentence and "cannot reach p < 0.05" in sentence
        assert all(float(p) >= 0.25 for p in re.findall(r"here p = ([0-9.]+)", sentence))
        assert "Wilcoxon" not in sentence and "significan" not in sentence
    table = report.format_summary(nums.summary)
    assert set(table["p (exact sign-flip over runs)"]) == {"not testable with 3 runs (smallest exact p 0.25)"}


def test_comparisons_against_the_reference_are_paired_by_seed(three_view_numbers):
    c = three_view_numbers.comparisons
    assert set(c["reference"]) == {"B"} and set(c["group"]) == {"A"}
    assert set(c["quantity"]) >= {"test_auc", "v0/v1 ratio of mean gradient norms", "v1/v2 ratio of mean gradient norms",
                                  "v2 share of loss reduction"}
    assert "loss" not in set(c["quantity"])  # a training scalar: described, not tested
    assert (c["design"] == "paired t by seed (3 pairs)").all()
    auc = c.set_index("quantity").loc["test_auc"]
    assert auc["difference"] == pytest.approx(0.01)  # every seed of A logged 0.01 more
    assert np.isfinite(c["mdd"]).all() and (c["p_holm"] >= c["p"]).all()


def test_five_view_report(tmp_path):
    runs = [record(tmp_path / f"r{s}", seed=s, condition="only", n_views=5, steps=6) for s in range(2)]
    paths = report.report(runs, tmp_path / "rep", progress=False)
    summary = pd.read_csv(paths["csv"])
    assert len(summary[summary["phase"] == "all"]) == 10  # every pair of 5 views
    shares = pd.read_csv(tmp_path / "rep" / "shares.csv")
    assert set(shares["view"]) == {f"v{i}" for i in range(5)} | {"shared"}
    md = paths["md"].read_text()
    for i in range(5):
        assert f"| v{i} |" in md  # a row in the shares table
    assert "v3/v4" in md and "Comparisons with the reference" not in md  # one condition: nothing to compare
    assert "the first 6 of 10 pairs" in md  # figures say which pairs they show


def test_run_without_logged_scalars_and_one_seed(tmp_path):
    run = record(tmp_path / "quiet", seed=0, condition="c", log=False)
    paths = report.report([run], tmp_path / "rep", progress=False)
    md = paths["md"].read_text()
    assert "Logged metrics" not in md
    assert "n = 1: values only" in md
    assert cli.main(["summary", str(run), "--no-progress"]) == 0


def test_runs_with_different_view_sets_are_compared_on_shared_views(tmp_path):
    runs = [record(tmp_path / "two", seed=0, condition="c", n_views=2),
            record(tmp_path / "three", seed=1, condition="c", n_views=3)]
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False))
    assert nums.pairs == [("v0", "v1")]
    assert nums.view_notes == ["View v2 was recorded in 1 of 2 runs (three): left out of the view comparisons; runs "
                               "with different view sets are compared only on the views they share."]
    paths = report.report(runs, tmp_path / "rep", progress=False)
    assert "View v2 was recorded in 1 of 2 runs" in paths["md"].read_text()


def test_baseline_option_and_its_error(three_view_runs, tmp_path, capsys):
    assert cli.main(["report", *map(str, three_view_runs), "--out", str(tmp_path / "r"), "--baseline", "A",
                     "--no-progress", "--include-flagged"]) == 0
    c = pd.read_csv(tmp_path / "r" / "comparisons.csv")
    assert set(c["reference"]) == {"A"}
    assert "Comparisons with the reference (A)" in (tmp_path / "r" / "report.md").read_text()
    assert cli.main(["report", *map(str, three_view_runs), "--out", str(tmp_path / "x"), "--baseline", "Z",
                     "--no-progress"]) == 2
    assert "'Z'" in capsys.readouterr().err


def test_runs_table_has_readable_optimizer_columns(three_view_numbers):
    runs = three_view_numbers.runs.set_index("run")
    assert runs.loc["A-s0", "optimizer"] == "SGD" and runs.loc["A-s0", "lr"] == "0.05"
    assert runs.loc["A-s0", "model"] == "Columns" and runs.loc["A-s0", "status"] == "closed"
    assert not any(str(v).startswith("{") for v in runs.to_numpy().ravel())  # no JSON cut mid-way


# --------------------------------------------------------------------------- the report's figures, on artists

@pytest.fixture(scope="module")
def report_figures(three_view_numbers):
    with publication_style():
        figs = panels.report_figures(three_view_numbers)
        for _, _, fig in figs:
            fig.canvas.draw()
    yield {name: fig for name, _, fig in figs}
    plt.close("all")


def test_one_size_family(report_figures):
    """Two journal columns wide; whole rows of ROW_HEIGHT up to a page (more rows share the page)."""
    for name, fig in report_figures.items():
        w, h = fig.get_size_inches()
        assert w == SIZES["double"][0] == 7.0, name
        assert (h / ROW_HEIGHT) == pytest.approx(round(h / ROW_HEIGHT)) or h == TALLEST, name


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_are_outside_the_data(report_figures):
    for name, fig in report_figures.items():
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends or name in ("matched_ratio", "conditions"), name  # those have none without missing cells
                                                                          # or views in the panels
        renderer = fig.canvas.get_renderer()
        areas = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not any(_overlaps(box, area) for area in areas), f"{name}: a legend over the data"


def test_conditions_in_their_own_palette_and_one_order(report_figures, three_view_numbers):
    speed = report_figures["conditional_speed"]
    texts = [t.get_text() for t in speed.legends[0].get_texts()]
    assert texts == ["B", "A"]
    colours = {to_hex(h.get_color()) for h in speed.legends[0].legend_handles}
    assert colours == {c.lower() for c in CONDITION_COLORS[:2]} and not colours & {c.lower() for c in OKABE_ITO}
    means = [ln for ln in speed.axes[0].lines if ln.get_gid() != "run" and ln.get_label() in texts]
    assert [ln.get_label() for ln in means] == ["B", "A"]
    assert len([ln for ln in speed.axes[0].lines if ln.get_gid() == "run"]) == 6  # 3 runs each: per-run lines
    dyn = report_figures["dynamics"]
    assert [ax.get_title() for ax in dyn.axes[:2]] == ["B", "A"]
    assert [ax.get_title() for ax in report_figures["matched_ratio"].axes[:2]] == ["B", "A"]
    first = report_figures["conditions"].axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == ["B", "A"]  # down the y axis, the reference on top
    assert first.get_ylim()[0] > first.get_ylim()[1]


def test_saved_figures_all_have_one_width(three_view_runs, tmp_path):
    report.report(three_view_runs, tmp_path / "r", progress=False, baseline="B")
    widths = {plt.imread(p).shape[1] for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert widths == {round(SIZES["double"][0] * 300)}
