"""The report end to end on small recorded runs, and the CLI (also as ``python -m dynamics``)."""
import base64
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import dynamics
from dynamics import analysis, cli, report
from dynamics.analysis.utilization import save_utilization


class TwoView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cc = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        self.mlo = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        self.head = torch.nn.Linear(6, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.cc(a), self.mlo(b)], dim=1))[:, 0]


def record(tmp_path, name, seed, condition, steps=12, cc_scale=3.0):
    torch.manual_seed(seed)
    model = TwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xa, xb = torch.randn(32, 4) * cc_scale, torch.randn(32, 4)
    y = (xa[:, 0] + 0.2 * xb[:, 0] > 0).float()
    rec = dynamics.attach(model, opt, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / name,
                          seed=seed, condition=condition, config={"lr": 0.05})
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xa, xb), y)
        loss.backward()
        rec.log(loss=loss.detach())
        opt.step()
    rec.log(val_auc=0.5 + seed / 100)
    rec.close()
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    paths = [record(tmp, "base-s1", 1, "base"), record(tmp, "base-s2", 2, "base"),
             record(tmp, "even<b>-s1", 3, "<even & b>", cc_scale=1.0), record(tmp, "base-s4", 4, "base")]
    u = pd.DataFrame({"view": ["cc", "mlo"], "metric": ["auc", "auc"], "with_view": [0.9, 0.9],
                      "without_view": [0.6, 0.85], "utilization": [1 / 3, 0.05 / 0.9],
                      "utilization_lo": [0.25, 0.0], "utilization_hi": [0.4, 0.1], "ablate": ["zero", "zero"]})
    mean_rows = u.assign(ablate="mean", without_view=[0.7, 0.88], utilization=[2 / 9, 0.02 / 0.9])
    u = pd.concat([u, mean_rows], ignore_index=True)
    save_utilization(u, paths[0])
    return paths


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    return out, report.report(runs, out, progress=False, baseline="base")


def test_report_numbers_equal_analysis(runs, written):
    _, paths = written
    csv = pd.read_csv(paths["csv"])
    pp, ps = dynamics.load_runs(runs)
    expected = analysis.imbalance_summary(pp, ps, by="condition")
    assert list(csv["group"]) == list(expected["group"])
    assert list(dict.fromkeys(csv["group"])) == ["base", "<even & b>"]  # the order the runs were given
    for col in ("grad_ratio", "grad_ratio_lo", "share_a", "share_b_hi", "layer_ratio", "p", "p_min", "n_pairs"):
        np.testing.assert_allclose(csv[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-9)
    # independent check of one number: cc/mlo ratio of the mean gradient norms of run base-s1, all steps
    one = pp[(pp["run"] == "base-s1") & pp["has_grad"]]
    norms = one.groupby(["view", "step"], observed=True)["grad_sq"].sum().pow(0.5).groupby("view", observed=True).mean()
    r1 = norms["cc"] / norms["mlo"]
    ratios = [r1]
    for run in ("base-s2", "base-s4"):
        one2 = pp[(pp["run"] == run) & pp["has_grad"]]
        n2 = one2.groupby(["view", "step"], observed=True)["grad_sq"].sum().pow(0.5).groupby("view", observed=True).mean()
        ratios.append(n2["cc"] / n2["mlo"])
    geo = float(np.prod(ratios) ** (1 / 3))
    row = expected[(expected["group"] == "base") & (expected["phase"] == "all")].iloc[0]
    assert row["grad_ratio"] == pytest.approx(geo)
    # its interval: Student t over the three runs' log ratios, t(0.975, 2) = 4.30265273
    logs = np.log(ratios)
    half = 4.302652729749464 * logs.std(ddof=1) / math.sqrt(3)
    assert (row["grad_ratio_lo"], row["grad_ratio_hi"]) == pytest.approx((math.exp(logs.mean() - half),
                                                                          math.exp(logs.mean() + half)))
    # the displayed table carries the same numbers
    md = paths["md"].read_text()
    assert f"{row['grad_ratio']:.3g} [{row['grad_ratio_lo']:.3g}, {row['grad_ratio_hi']:.3g}]" in md
    html = paths["html"].read_text()
    assert f"{row['grad_ratio']:.3g} [" in html


def test_report_html_is_self_contained_and_escaped(written):
    out, paths = written
    html = paths["html"].read_text()
    assert "<even & b>" not in html and "&lt;even &amp; b&gt;" in html
    assert "even<b>-s1" not in html and "even&lt;b&gt;-s1" in html
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == 5
    assert base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="figures' not in html  # nothing outside the file
    md = paths["md"].read_text()
    for name in ("dynamics", "matched_ratio", "share", "conditional_speed", "conditions"):
        assert f"figures/{name}.png" in md
        assert (out / "figures" / f"{name}.pdf").exists()
    assert "<even" not in md
    # findings, logged metrics and utilization are present
    assert "matched layers" in md and "val_auc" in md and "conditional utilization rate 0.33" in md
    assert "replacing cc by its training mean changed auc from 0.9 to 0.7 (conditional utilization rate 0.22" in md
    assert "n = 1: values only" in md  # the one-run condition
    assert "Wilcoxon" not in md and "rank-biserial" not in md


def test_findings_sentence_hand_example():
    s = pd.DataFrame([dict(group="base", phase="all", n_runs=5, view_a="cc", view_b="mlo", leads="cc",
                           grad_ratio=2.0, grad_ratio_lo=1.5, grad_ratio_hi=2.5, share_a=0.64, share_a_lo=0.6,
                           share_a_hi=0.68, share_b=0.3, share_b_lo=0.25, share_b_hi=0.35, n_pairs=22,
                           n_a_greater=21, layer_ratio=1.8, layer_ratio_lo=1.2, layer_ratio_hi=2.7, n_test_runs=5,
                           p=0.0625, p_min=0.0625, p_holm=0.125)])
    shares = pd.DataFrame([dict(group="base", phase="all", view=v, n_runs=5, share=sh, share_lo=lo, share_hi=hi,
                                n_largest=k) for v, sh, lo, hi, k in (("cc", 0.64, 0.6, 0.68, 5),
                                                                     ("mlo", 0.3, 0.25, 0.35, 0))])
    text = report.findings(s, shares=shares)
    assert text[0] == ("In base, cc had the largest mean share of the loss reduction, 64% (95% t-interval over 5 "
                       "runs: 60%–68%), and the largest share in 5 of 5 runs; the others: mlo 30%.")
    assert text[1] == ("In base, cc's gradient norm exceeded mlo's in 21 of 22 matched layers (layers × runs: a "
                       "description, not a test); the matched-layer ratio cc/mlo (per run, the geometric mean over "
                       "matched layers) was 1.8 (95% t-interval over 5 runs, log scale: 1.2–2.7): cc leads this pair "
                       "(the interval lies above 1); the exact sign-flip test over 5 runs cannot reach p < 0.05 (its "
                       "smallest p is 0.062; here p = 0.062), so this sign-flip test cannot show it at α = 0.05; the "
                       "t-interval rests on normality.")
    six = s.assign(n_test_runs=6, n_runs=6, p=0.03125, p_min=0.03125, p_holm=0.0625)
    assert report.findings(six, shares=shares)[1].endswith(
        "; exact sign-flip test over 6 runs: p = 0.031, Holm-adjusted p = 0.062.")


def test_group_by_config_field_and_errors(runs, tmp_path):
    data = report.load_report_data(runs, progress=False)
    s = report.summary_table(data, by="lr")
    assert set(s["group"]) == {"0.05"}
    with pytest.raises(ValueError, match="'nope'"):
        report.summary_table(data, by="nope")
    with pytest.raises(ValueError, match="not a dynamics run"):
        report.load_report_data([tmp_path], progress=False)


def test_cli_summary_and_errors(runs, capsys):
    assert cli.main(["summary", *map(str, runs), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ratio of mean gradient norms A/B" in out and "cc/mlo" in out and "<even & b>" in out
    assert cli.main(["summary", *map(str, runs), "--views", "cc", "xx", "--no-progress"]) == 2
    assert "'xx'" in capsys.readouterr().err
    assert cli.main(["summary", str(runs[0]), "--csv", "--phase", "early", "--no-progress"]) == 0
    csv = capsys.readouterr().out
    assert csv.startswith("group,phase") and csv.count("\n") == 2


def test_python_m_dynamics_report(runs, tmp_path):
    res = subprocess.run([sys.executable, "-m", "dynamics", "report", str(runs[0]), "--out", str(tmp_path / "r"),
                          "--by", "run", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r" / "report.html").exists()


def test_outcome_metrics_prefer_test_auc_then_other_outcomes():
    assert report.panels.outcome_metrics(["loss", "val_auc", "test_acc", "test_auc", "present_cc"]) == ["test_auc", "test_acc"]
    assert report.panels.outcome_metrics(["loss", "val_acc"]) == ["val_acc"]
    assert report.panels.outcome_metrics(["loss", "present_cc"]) == ["loss", "present_cc"]


def test_report_numbers_computes_each_analysis_once(runs, tmp_path, monkeypatch):
    """The view dynamics and matched layers are computed once per report, from the runs' sums, whatever reads
    them."""
    from dynamics.analysis import imbalance

    calls = {}

    def counting(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    for name in ("clean", "view_dynamics", "matched_pairs", "view_dynamics_from_sums"):
        counting(analysis, name)
    counting(imbalance, "clean")  # what the analysis functions call when not given the cleaned rows
    counting(report.computed.sweep, "sweep_layer_means")
    data = report.load_report_data(runs, progress=False)
    nums = report.ReportNumbers(data, baseline="base")
    assert nums.view_dynamics is nums.view_dynamics and calls == {"view_dynamics_from_sums": 1}
    calls.clear()
    report.build_report(data, tmp_path / "once", progress=False, baseline="base")
    # the runs' sums, each analysis once, and never a per-tensor row
    assert calls == {"view_dynamics_from_sums": 1, "sweep_layer_means": 1}


def test_conditions_figure_with_utilization_keeps_legends_off_the_data(runs):
    from dynamics.report import panels
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False), baseline="base")
    _, _, fig = panels.conditions_figure(nums)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legends[0].get_texts()] == ["cc", "mlo"]  # utilization by view
    areas = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    box = legends[0].get_window_extent(renderer)
    assert not any(box.x0 < a.x1 and a.x0 < box.x1 and box.y0 < a.y1 and a.y0 < box.y1 for a in areas)
