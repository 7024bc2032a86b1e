"""The reproduction's parts: condition names, the digits task, the linear probe and the findings' statistics,
each against an independent reference (hand-computed values, scipy, brute force)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize, stats

from analyses import findings as F
from analyses.conditions import JOINT, grid, parse_condition
from analyses.datasets import digits
from analyses.linear_probe import fit_logistic, logistic_objective, standardise
from analyses.models import mlp_model


# ------------------------------------------------------------------------------------------------ conditions
def test_condition_names_resolve():
    views = ("cc", "mlo")
    assert parse_condition("only-mlo", views).views == ("mlo",)
    assert parse_condition("dropout-0.5", views).p_drop == 0.5
    assert parse_condition("dropout", views, p_drop=0.3).p_drop == 0.3
    assert parse_condition("rebalance-random", views).rebalance == "random"
    assert parse_condition("rebalance", views).architecture == "separate"
    assert grid(views) == ["only-cc", "only-mlo", *JOINT]


@pytest.mark.parametrize("name, fragment", [("only-lcc", "'lcc' is not one of"), ("dropout-x", "not a number"),
                                            ("dropout-1.5", "(0, 1]"), ("ensemble", "not trained"),
                                            ("bogus", "unknown condition 'bogus'")])
def test_bad_condition_names_are_named_in_the_error(name, fragment):
    with pytest.raises(ValueError) as err:
        parse_condition(name, ("cc", "mlo"))
    assert fragment in str(err.value) and repr(name) in str(err.value)


def test_single_view_model_reads_only_its_view():
    m = mlp_model("separate", {"a": 5}, hidden=8)
    x = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
    out = m(x)
    x["b"] = torch.randn(4, 3) * 100
    assert out.shape == (4,) and torch.equal(m(x), out)
    assert m.head[0].in_features == 8  # one column's width


# ------------------------------------------------------------------------------------------------ digits
def test_digits_views_and_the_colour_shift():
    s = digits.load()
    assert s.view_names == ("colour", "grey")
    assert s.train.views["colour"].shape[1] == 3 * 16 and s.train.views["grey"].shape[1] == 64
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    # recover each sample's colour from the raw rendering: agreement with the label near 0.95, then 0.5
    pixels, labels = digits.read_digits()
    y = labels % 2 == 0
    cfg = digits.DigitsConfig()
    parts = digits.stratified_split(labels, (0.6, 0.2, 0.2), cfg.seed)
    rng = np.random.default_rng(cfg.seed + 7919)
    agree = np.full(len(y), cfg.agree_train)
    agree[parts[2]] = cfg.agree_test
    green = np.where(rng.random(len(y)) < agree, y, ~y)
    raw = digits.render(pixels, green, cfg, np.random.default_rng(0))["colour"].reshape(-1, 3, 16)
    is_green = raw[:, 1].sum(1) > raw[:, 0].sum(1)
    np.testing.assert_array_equal(is_green[raw.sum((1, 2)) > 0], green[raw.sum((1, 2)) > 0])
    train_agree = (green == y)[parts[0]].mean()
    test_agree = (green == y)[parts[2]].mean()
    assert abs(train_agree - 0.95) < 0.03 and abs(test_agree - 0.5) < 0.08


def test_digits_bad_config_is_named():
    with pytest.raises(ValueError, match="agree_test"):
        digits.DigitsConfig(agree_test=1.5)
    with pytest.raises(ValueError, match="block"):
        digits.DigitsConfig(block=3)


# ------------------------------------------------------------------------------------------------ probe
def test_logistic_fit_matches_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0).double()
    (x,) = standardise(x)
    w = fit_logistic(x, y, l2=0.05)

    def f(v):
        t = torch.tensor(v, requires_grad=True)
        loss = logistic_objective(t, x, y, 0.05)
        loss.backward()
        return loss.item(), t.grad.numpy()

    ref = optimize.minimize(f, np.zeros(6), jac=True, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(w.numpy(), ref.x, atol=1e-6)


# ------------------------------------------------------------------------------------------------ findings
def _results():
    """Two views, 3 seeds: single-view scores chosen so that the ensemble's AUC is known by hand."""
    y = np.array([0, 0, 1, 1])
    out = []
    for seed in range(3):
        out.append({"condition": "only-a", "seed": seed, "test_auc": 0.75, "test_acc": 0.5, "best_val_auc": 0.7,
                    "steps": 1, "test_scores": [0.0, 2.0, 1.0, 3.0], "utilization": {}, "probe_auc": {"a": 0.7}})
        out.append({"condition": "only-b", "seed": seed, "test_auc": 0.5, "test_acc": 0.5, "best_val_auc": 0.5,
                    "steps": 1, "test_scores": [0.0, 0.0, 2.0, -1.0], "utilization": {}, "probe_auc": {"b": 0.5}})
        for c, auc in (("separate", 0.80 + 0.01 * seed), ("shared", 0.85 + 0.02 * seed)):
            out.append({"condition": c, "seed": seed, "test_auc": auc, "test_acc": 0.5, "best_val_auc": 0.5,
                        "steps": 1, "test_scores": [0, 0, 0, 0], "utilization": {"mean/b": 0.1 * seed},
                        "probe_auc": {"a": 0.7, "b": 0.6}})
    return out, y


def test_ensemble_is_the_sum_of_logits():
    results, y = _results()
    ens = F.ensemble_runs(results, ["a", "b"], y)
    # sums: [0, 2, 3, 2] → positives 3, 2 against negatives 0, 2: pairs won 1 + 1 + 1 + 0.5 of 4 → 0.875
    assert list(ens["test_auc"]) == [0.875] * 3


def test_findings_against_hand_computed_statistics():
    results, y = _results()
    table = F.results_table(results, ["a", "b"], y)
    f = F.findings("toy", table, ["a", "b"], len(y), ["separate", "shared"], F.Gate(min_single=0.6, min_gain=0.1))
    assert f["weaker_view"] == "b" and f["best_single"] == "a"
    assert [c["passed"] for c in f["checks"]] == [True, False, True]  # b's 0.5 < 0.6; gain 0.125 >= 0.1
    assert not f["passed"]
    vs = f["conditions"]["shared"]["vs_separate"]
    d = np.array([0.05, 0.06, 0.07])  # shared − separate per seed
    se = d.std(ddof=1) / math.sqrt(3)
    assert vs["difference"] == pytest.approx(0.06)
    assert vs["hi"] - vs["difference"] == pytest.approx(stats.t.ppf(0.975, 2) * se)
    assert vs["p_holm"] == pytest.approx(2 * stats.t.sf(0.06 / se, 2))  # one comparison: Holm changes nothing
    gap = f["conditions"]["separate"]["greedy_gap"]
    assert gap["difference"] == pytest.approx(0.875 - 0.81)
    util = f["conditions"]["shared"]["utilization_b"]
    assert util["mean"] == pytest.approx(0.1) and util["n"] == 3
    json.dumps(f, default=float)  # JSON-ready
    md = F.markdown(f)
    assert "| shared |" in md and "**FAILED**" in md


def test_verdict_states_the_detectable_difference_for_a_null():
    assert F.verdict(0.01, 0.4, 0.034).endswith("smallest detectable: 0.034)")
    assert F.verdict(-0.05, 0.01, 0.02) == "worse than separate"
    assert "cannot tell" in F.verdict(0.0, math.nan, math.nan)
    # 2 seeds: a t-test p of 0.02 with df = 1, but the exact sign-flip test cannot go below 0.5
    assert F.verdict(-0.007, 0.02, 0.001, p_exact_min=0.5).startswith("too few seeds to tell")


def test_dominant_share_reads_the_reports_shares():
    shares = pd.DataFrame({"group": ["x", "x", "x"], "phase": ["all"] * 3, "view": ["a", "b", "shared"],
                           "share": [0.3, 0.5, 0.9], "share_lo": [0.2, 0.4, 0.8], "share_hi": [0.4, 0.6, 1.0],
                           "n_runs": [3, 3, 3]})
    assert F.dominant_shares(shares)["x"]["view"] == "b"  # shared never dominates


def test_findings_take_the_reports_holm_family():
    """The report's comparisons.csv holds test AUC among its other tests: the findings cite its adjusted p and
    its MDD (at the comparison's Holm level), not a family of their own."""
    from dynamics.analysis.comparisons import holm_family
    from dynamics.analysis import min_detectable_difference
    results, y = _results()
    table = F.results_table(results, ["a", "b"], y)
    alone = F.findings("toy", table, ["a", "b"], len(y), ["separate", "shared"], F.Gate())
    own = F.primary(table, ["separate", "shared"])
    report_rows, _ = holm_family(own, [0.001, 0.004, 0.3])  # the report's other tests
    f = F.findings("toy", table, ["a", "b"], len(y), ["separate", "shared"], F.Gate(), comparisons=report_rows)
    vs = f["conditions"]["shared"]["vs_separate"]
    p = float(own["p"].iloc[0])
    ranked = sorted([p, 0.001, 0.004, 0.3])
    k = ranked.index(p)
    by_hand = max(min(1.0, (4 - i) * ranked[i]) for i in range(k + 1))  # Holm step-down, written out
    own_family = alone["conditions"]["shared"]["vs_separate"]["p_holm"]
    assert vs["p_holm"] == pytest.approx(by_hand) and vs["p_holm"] != pytest.approx(own_family)
    assert vs["alpha_holm"] == pytest.approx(0.05 / (4 - k))
    assert vs["mdd"] == pytest.approx(min_detectable_difference(float(own["se"].iloc[0]), 2, alpha=0.05 / (4 - k)))
    assert "Holm-corrected in the report's one family" in F.markdown(f)


def test_findings_give_values_only_below_three_seeds_and_logit_auc_intervals():
    results, y = _results()
    results = [r for r in results if r["seed"] < 2]
    table = F.results_table(results, ["a", "b"], y)
    f = F.findings("toy", table, ["a", "b"], len(y), ["separate", "shared"], F.Gate())
    vs = f["conditions"]["shared"]["vs_separate"]
    assert vs["verdict"] == "n = 2: values only" and math.isnan(vs["p"]) and math.isnan(vs["mdd"])
    assert "n = 2: values only (0.850, 0.870)" in F.markdown(f)
    auc = F.auc_interval([0.97, 0.99, 0.995])
    z = np.log(np.array([0.97, 0.99, 0.995]) / (1 - np.array([0.97, 0.99, 0.995])))
    hi = stats.t.interval(0.95, 2, loc=z.mean(), scale=stats.sem(z))[1]
    assert auc["hi"] == pytest.approx(1 / (1 + math.exp(-hi))) and auc["hi"] < 1
    assert auc["interval"] == "Student t over runs, logit scale"
