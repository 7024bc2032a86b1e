"""The interventions figure: decisions drawn over the per-view dynamics, and its place in the report."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import dynamics  # noqa: E402
from dynamics.balance import ogm_ge, rebalance  # noqa: E402
from dynamics.report.interventions import intervention_columns, intervention_figure  # noqa: E402


def _tables():
    steps = np.arange(6)
    rows, vd = [], []
    for run, group in (("r1", "rb"), ("r2", "rb"), ("o1", "ogm"), ("p1", "plain")):
        for t in steps:
            row = {"run": run, "step": t}
            if group == "rb":
                row.update(rebalanced_a=float(t % 2 == 0 and run == "r1"), rebalanced_b=float(t == 3))
            if group == "ogm":
                row.update(ogm_coef_a=1.0, ogm_coef_b=0.5 + t / 20)
            rows.append(row)
            vd += [{"run": run, "step": t, "view": v, "learning_speed": s * (t + 1)} for v, s in (("a", 1), ("b", 2))]
    vd = pd.DataFrame(vd)
    vd["view"] = pd.Categorical(vd["view"], ["a", "b", "shared"])
    group_of = {"r1": "rb", "r2": "rb", "o1": "ogm", "p1": "plain"}
    return pd.DataFrame(rows), vd, group_of


def test_columns_and_figure_from_hand_made_tables():
    per_step, vd, group_of = _tables()
    assert intervention_columns(per_step, ["a", "b"]) == {
        "re-balancing": {"a": "rebalanced_a", "b": "rebalanced_b"}, "OGM-GE": {"a": "ogm_coef_a", "b": "ogm_coef_b"}}
    name, caption, fig = intervention_figure(per_step, vd, group_of=group_of)
    assert name == "interventions" and "decisions" in caption
    assert all(ax.get_visible() for ax in fig.axes) and len(fig.axes) == 4  # a pair of panels per (kind, group)
    titles = {ax.get_title() for ax in fig.axes} - {""}  # the decision panels below have no title
    assert titles == {"re-balancing (rb)", "OGM-GE (ogm)"}  # one group each, no panel for "plain"
    rb = next(ax for ax in fig.axes if ax.get_title() == "re-balancing (rb)")
    below = next(ax for ax in fig.axes if ax.get_ylabel().startswith("fraction"))
    assert below.get_shared_x_axes().joined(below, rb) and not below.get_shared_y_axes().joined(below, rb)
    assert below.get_position().y1 <= rb.get_position().y0  # under its dynamics, not over them (no twin axes)
    # fraction of the group's two runs re-balancing a: r1 at even steps -> 0.5, else 0
    heights = [p.get_paths()[0].vertices[:, 1].max() for p in below.collections]
    assert heights == pytest.approx([0.5, 1.0])  # a: half the runs at most; b: both runs at step 3
    ogm = [ax for ax in fig.axes if " ".join(ax.get_ylabel().split()) == "gradient coefficient k"][0]  # maybe wrapped
    k_b = [line for line in ogm.get_lines() if line.get_label() == "k b"][0]
    assert k_b.get_ydata().tolist() == pytest.approx([0.5 + t / 20 for t in range(6)])
    assert intervention_figure(per_step.drop(columns=[c for c in per_step if c not in ("run", "step")]), vd) is None


def test_report_shows_the_interventions(tmp_path):
    torch.manual_seed(0)

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cc, self.mlo, self.head = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(6, 2)

        def forward(self, a, b):
            return self.head(torch.cat([self.cc(a), self.mlo(b)], 1))

    criterion = torch.nn.CrossEntropyLoss()
    for seed in (0, 1):
        model = Two()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        branches = {"cc": model.cc, "mlo": model.mlo}
        with dynamics.attach(model, opt, views=branches, out=tmp_path / f"run{seed}", seed=seed, condition="balanced"), \
                rebalance(model.head, opt, branches, threshold=0.0, steps=2), \
                ogm_ge(model.head, opt, branches, loss=criterion, alpha=1.0):
            for _ in range(8):
                a, b, y = torch.randn(16, 4), torch.randn(16, 4), torch.randint(0, 2, (16,))
                criterion(model(a, b), y).backward()
                opt.step()
                opt.zero_grad()
    out = dynamics.report.report([tmp_path / "run0", tmp_path / "run1"], tmp_path / "rep", progress=False,
                                 )
    assert (tmp_path / "rep" / "figures" / "interventions.png").exists()
    assert "figures/interventions.png" in out["md"].read_text()


def test_one_panel_has_the_reports_width_and_no_twin_axes():
    """One kind in one group used to be a one-column figure (1050 px against the others' width) with the
    decisions on twin axes over the learning-speed lines."""
    from dynamics.report.style import SIZES
    per_step, vd, group_of = _tables()
    only = per_step[per_step["run"].isin(["r1", "r2"])].drop(columns=["ogm_coef_a", "ogm_coef_b"])
    _, _, fig = intervention_figure(only, vd[vd["run"].isin(["r1", "r2"])], group_of=group_of)
    assert fig.get_size_inches()[0] == SIZES["double"][0]
    places = [tuple(round(v, 6) for v in ax.get_position().bounds) for ax in fig.axes]
    assert len(places) == len(set(places)) == 2  # two panels, none drawn over another
