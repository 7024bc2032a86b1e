"""Replication that includes the data, the combined test-AUC interval, the new conditions and the claims,
each against a hand computation or an independent read of the data."""
import math

import numpy as np
import pytest
from scipy import stats

from analyses import claims as C
from analyses import findings as F
from analyses import reproduce
from analyses.conditions import parse_condition, sweep
from analyses.datasets import digits, mfeat, phantom
from analyses.train import TrainConfig, build_data
from dynamics.analysis.metrics import roc_auc


def test_each_seed_draws_its_own_split_and_data():
    a, b = (build_data(TrainConfig(dataset="mfeat", seed=k)) for k in (0, 1))
    assert a.info["seed"] == 0 and b.info["seed"] == 1
    assert set(a.test.ids) != set(b.test.ids) and len(a.test) == len(b.test) == 400
    c = build_data(TrainConfig(dataset="mfeat", seed=5, data_seed=1))  # a fixed data seed overrides the seed
    assert c.test.ids == b.test.ids
    d0, d1 = (build_data(TrainConfig(dataset="digits", seed=k)) for k in (0, 1))
    assert d0.info["seed"] == 0 and d1.info["seed"] == 1 and d0.test.ids != d1.test.ids
    # the same digit in both test sets gets its own grey-view noise per seed
    common = sorted(set(d0.test.ids) & set(d1.test.ids))[0]
    g0 = d0.test.views["grey"][d0.test.ids.index(common)]
    g1 = d1.test.views["grey"][d1.test.ids.index(common)]
    assert not np.allclose(g0.numpy(), g1.numpy())


def test_phantom_test_split_has_the_asked_size(tmp_path):
    n, fractions = phantom.split_sizes(40, 60)
    assert n == 100 and fractions == pytest.approx((0.3, 0.1, 0.6))
    s = phantom.load(phantom.variant("v3", n=n, size=16, seed=2), root=tmp_path, fractions=fractions)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 60)
    assert s.info["seed"] == 2 and s.info["cc_gain"] == phantom.VARIANTS["v3"]["cc_gain"]
    with pytest.raises(ValueError, match="unknown phantom variant 'v9'"):
        phantom.variant("v9")


def test_v3_views_differ_as_designed():
    """v3: MLO's own occult chance (independent of CC's), CC less noisy than MLO (std of the image minus its
    lesion-free twin is the detector noise alone, so compare two renderings that differ only in noise)."""
    v = phantom.generate(phantom.variant("v3", n=2048, size=16))["visible"]
    cc, mlo = (v & 1) > 0, (v & 2) > 0
    assert abs(1 - cc.mean() - phantom.VARIANTS["v3"]["occult"]) < 0.03
    assert abs(1 - mlo.mean() - phantom.VARIANTS["v3"]["occult_mlo"]) < 0.03
    assert abs((cc & mlo).mean() - cc.mean() * mlo.mean()) < 0.03
    quiet = phantom.generate(phantom.PhantomConfig(n=64, size=16, noise_cc=0.0, noise_mlo=0.0))
    loud = phantom.generate(phantom.PhantomConfig(n=64, size=16, noise_cc=1.0, noise_mlo=2.0))
    sd = {k: float(np.std(loud[k].astype(float) - quiet[k].astype(float))) for k in ("cc", "mlo")}
    assert sd["mlo"] == pytest.approx(2 * sd["cc"], rel=0.1)


def test_v2_defaults_give_the_same_images_as_before():
    """The new per-view options at their defaults reproduce version 2's generator: CC and MLO have the same
    noise level and occult chance (the symmetric control)."""
    a = phantom.generate(phantom.PhantomConfig(n=64, size=16))
    b = phantom.generate(phantom.PhantomConfig(n=64, size=16, cc_gain=1.0, noise_cc=1.0, noise_mlo=1.0,
                                               occult_mlo=0.25))
    for k in ("cc", "mlo", "y", "visible"):
        np.testing.assert_array_equal(a[k], b[k])


def _logit(a):
    return math.log(a / (1 - a))


def _expit(z):
    return 1 / (1 + math.exp(-z))


def test_combined_interval_by_hand():
    """On the logit scale (each run's DeLong variance carried there by the delta method, V / (a(1 − a))²), the
    variance of the mean is max(between-run variance, mean DeLong variance) / n, with t on n − 1 df."""
    t = stats.t.ppf(0.975, 2)
    # the between-run variance exceeds the mean DeLong variance: it is used
    v, w = [0.80, 0.82, 0.84], [1e-4] * 3
    x = [_logit(a) for a in v]
    r = F.combined_interval(v, w)
    centre, half = float(np.mean(x)), t * math.sqrt(np.var(x, ddof=1) / 3)
    assert r["mean"] == pytest.approx(_expit(centre)) and r["hi"] == pytest.approx(_expit(centre + half))
    assert r["lo"] == pytest.approx(_expit(centre - half)) and 0 < r["lo"] < r["hi"] < 1
    # runs that agree better than their test sets allow: the DeLong floor holds the interval open
    v2, w2 = [0.80, 0.8001, 0.8002], [1e-4, 2e-4, 3e-4]
    x2 = [_logit(a) for a in v2]
    floor = np.mean([wi / (a * (1 - a)) ** 2 for a, wi in zip(v2, w2)])
    r2 = F.combined_interval(v2, w2)
    assert r2["hi"] == pytest.approx(_expit(np.mean(x2) + t * math.sqrt(floor / 3)))
    assert r2["sd_delong"] == pytest.approx(math.sqrt(2e-4)) and "DeLong" in r2["interval"]
    # near the bound the interval stays inside (0, 1); below three runs the values only
    assert F.combined_interval([0.97, 0.99, 0.995], [1e-3] * 3)["hi"] < 1
    few = F.combined_interval([0.8, 0.9], [1e-4] * 2)
    assert np.isnan(few["lo"]) and few["interval"].startswith("n = 2") and few["values"] == [0.8, 0.9]


def _single(seed, view, y, s):
    return {"condition": f"only-{view}", "seed": seed, "test_auc": roc_auc(y, s), "test_acc": 0.5,
            "best_val_auc": 0.5, "steps": 1, "test_scores": s, "test_y": y, "data_seed": seed}


def test_ensemble_uses_each_seeds_own_test_set():
    y0, y1 = [0, 0, 1, 1, 0, 1], [1, 0, 1, 0, 0, 1]
    results = [_single(0, "a", y0, [0.0, 2.0, 1.0, 3.0, 0.5, 2.5]), _single(0, "b", y0, [0.0, 0.0, 2.0, -1.0, 1.0, 1.0]),
               _single(1, "a", y1, [1.0, 0.0, 2.0, 3.0, 0.0, 1.0]), _single(1, "b", y1, [0.0, 1.0, 0.0, 0.0, 0.0, 2.0])]
    ens = F.ensemble_runs(results, ["a", "b"])
    # sums seed 0: [0, 2, 3, 2, 1.5, 3.5]: positives 3, 2, 3.5 vs negatives 0, 2, 1.5: 3 + 2.5 + 3 = 8.5 of 9
    # sums seed 1: [1, 1, 2, 3, 0, 3]: positives 1, 2, 3 vs negatives 1, 3, 0: 1.5 + 2 + 2.5 = 6 of 9
    assert ens["test_auc"].tolist() == pytest.approx([8.5 / 9, 6 / 9])
    assert np.isfinite(ens["test_auc_var"]).all()
    bad = results[:1] + [_single(0, "b", y1, [0.0] * 6)]
    with pytest.raises(ValueError, match="different test sets"):
        F.ensemble_runs(bad, ["a", "b"])


def test_new_conditions_resolve():
    views = ("cc", "mlo")
    swapped = parse_condition("shared-swapped", views)
    assert swapped.architecture == "shared" and swapped.views == ("mlo", "cc")
    assert parse_condition("rebalance-t0.1", views).threshold == 0.1
    assert parse_condition("rebalance", views).threshold == 0.01
    assert all(parse_condition(c, views).rebalance == "guided" for c in sweep())
    with pytest.raises(ValueError, match="'rebalance-tx'"):
        parse_condition("rebalance-tx", views)


def test_finished_runs_are_recognised_and_half_runs_are_not(tmp_path):
    import json
    from dataclasses import replace
    from analyses.train import config_key
    cfg = TrainConfig(dataset="mfeat", condition="separate", seed=3, out=str(tmp_path / "r"))
    assert reproduce.finished(cfg) is None
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"seed": 3, "config_key": config_key(cfg)}))
    assert reproduce.finished(cfg)["seed"] == 3
    assert reproduce.finished(replace(cfg, out=str(tmp_path / "r"), device="cuda"))  # where/how: the same run
    for other in (replace(cfg, data_seed=0), replace(cfg, epochs=1), replace(cfg, condition="shared")):
        assert reproduce.finished(other) is None  # another data seed, settings or condition: not this run
    (tmp_path / "r" / "results.json").write_text('{"condition": "sep')
    assert reproduce.finished(cfg) is None


def test_claim_words():
    assert C.word(0.01, 0.03, 0.015) == "held"
    assert C.word(0.01, -0.03, 0.015) == "did not hold"
    assert C.word(0.4, 0.003, 0.015) == "did not hold"   # a powered null
    assert C.word(0.4, 0.003, 0.05) == "cannot tell"     # an unpowered one
    assert C.word(0.01, 0.03, 0.015, p_exact_min=0.5) == "cannot tell"


def test_imbalance_claims_by_hand():
    """Three seeds; view a has 4x b's Σ‖g‖² and 16x its parameters: raw norm ratio 2, per parameter 1/2."""
    results = []
    for seed, (ga, sa, sb) in enumerate([(4.0, 0.6, 0.3), (8.0, 0.7, 0.2), (2.0, 0.5, 0.4)]):
        results.append({"condition": "separate", "seed": seed, "dynamics": {
            "a": {"grad_sq": ga, "loss_reduction": sa, "share": sa, "n_params": 1600},
            "b": {"grad_sq": ga / 4, "loss_reduction": sb, "share": sb, "n_params": 100}}})
    out = C.imbalance(results, ["a", "b"])
    g = out["gradient_norm"]
    assert g["ratio"]["mean"] == pytest.approx(2.0) and g["ratio_per_parameter"]["mean"] == pytest.approx(0.5)
    d = np.array([0.3, 0.5, 0.1])
    se = d.std(ddof=1) / math.sqrt(3)
    s = out["loss_reduction"]["share_difference"]
    assert s["mean"] == pytest.approx(0.3) and s["p"] == pytest.approx(2 * stats.t.sf(0.3 / se, 2))
    assert out["loss_reduction"]["verdict"] == "cannot tell"  # 3 runs: the exact test's smallest p is 0.25


def test_seeds_needed_against_the_formula_by_hand():
    from analyses import power
    # sd 0.02, Holm α 0.05/6: n = 15 gives (t(0.99583, 14) + t(0.8, 14)) * 0.02 / √15
    a = 0.05 / 6
    by_hand = lambda n: (stats.t.ppf(1 - a / 2, n - 1) + stats.t.ppf(0.8, n - 1)) * 0.02 / math.sqrt(n)
    n = power.seeds_needed(0.02, a)
    assert by_hand(n) <= 0.02 < by_hand(n - 1)
    import pandas as pd
    rows = [{"condition": c, "seed": k, "test_auc": 0.8 + (0.01 * k if c == "shared" else 0) + (0.002 * k ** 2 if c == "rebalance" else 0)}
            for c in ("separate", "shared", "rebalance", "only-a", "ensemble") for k in range(4)]
    p = power.plan(pd.DataFrame(rows))
    assert p["comparisons"] == 2 and p["alpha_holm"] == pytest.approx(0.025)
    assert p["sd_diff_max"] == pytest.approx(np.std([0.0, 0.01, 0.02, 0.03], ddof=1)) and p["worst"] == "shared"


def test_a_retuned_phantom_variant_is_another_run(monkeypatch):
    from analyses.train import config_key
    cfg = TrainConfig(dataset="phantom-v3", condition="separate", seed=0)
    before = config_key(cfg)
    monkeypatch.setitem(phantom.VARIANTS, "v3", {**phantom.VARIANTS["v3"], "cc_gain": 9.0})
    assert config_key(cfg) != before
    assert config_key(TrainConfig(dataset="phantom", condition="separate", seed=0)) != before


def test_guidance_is_compared_with_its_dose_matched_control():
    """rebalance − rebalance-random paired by seed (by hand), and the control is not counted as evidence that
    re-balancing helps."""
    rows = []
    for k, (sep, reb, rnd) in enumerate([(0.80, 0.85, 0.82), (0.81, 0.87, 0.82), (0.79, 0.84, 0.80)]):
        rows += [{"condition": c, "seed": k, "test_auc": v, "test_acc": 0.5, "best_val_auc": 0.5, "steps": 1}
                 for c, v in (("separate", sep), ("rebalance", reb), ("rebalance-random", rnd))]
    table = F.results_table(rows, ["a", "b"])
    f = F.findings("toy", table, ["a", "b"], 10, ["separate", "rebalance", "rebalance-random"], F.Gate(), results=rows)
    d = np.array([0.03, 0.05, 0.04])
    vs = f["conditions"]["rebalance"]["vs_random"]
    assert vs["difference"] == pytest.approx(0.04)
    assert vs["hi"] - vs["difference"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3))
    icml = f["claims"]["icml2022"]
    assert [r["condition"] for r in icml["rebalancing_helps"]] == ["rebalance"]
    assert icml["guidance_helps"]["verdict"] == "cannot tell"  # 3 seeds: the exact test's smallest p is 0.25
    assert icml["random_control"]["condition"] == "rebalance-random"


def test_power_plans_at_the_report_familys_first_holm_level(tmp_path):
    """The family counts every finite p of the report's comparisons.csv and summary.csv (hand-made: 3 + 2, one
    NaN each), and the planned n is the formula's at 0.05 / 5."""
    import pandas as pd
    from analyses import power
    pd.DataFrame({"p": [0.01, 0.2, np.nan, 0.5]}).to_csv(tmp_path / "comparisons.csv", index=False)
    pd.DataFrame({"p": [0.03, np.nan, 0.9]}).to_csv(tmp_path / "summary.csv", index=False)
    assert power.report_family_size(tmp_path) == 5
    assert power.report_family_size(tmp_path / "none") is None
    rows = [{"condition": c, "seed": k, "test_auc": 0.8 + (0.01 * k if c == "shared" else 0)}
            for c in ("separate", "shared") for k in range(4)]
    p = power.plan(pd.DataFrame(rows), family=5)
    a, sd = 0.05 / 5, np.std([0.0, 0.01, 0.02, 0.03], ddof=1)
    by_hand = lambda n: (stats.t.ppf(1 - a / 2, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert p["family"] == 5 and p["alpha_holm"] == pytest.approx(a)
    assert by_hand(p["seeds"]) <= 0.02 < by_hand(p["seeds"] - 1)


def test_power_check_names_the_worst_comparison_and_any_without_an_mdd():
    conds = {"separate": {}, "shared": {"vs_separate": {"mdd": 0.012}}, "rebalance": {"vs_separate": {"mdd": 0.019}}}
    pc = F.power_check(conds)
    assert (pc["worst"], pc["worst_mdd"], pc["met"], pc["missing"]) == ("rebalance", 0.019, True, [])
    conds["dropout-0.5"] = {"vs_separate": {"mdd": 0.021}}
    assert F.power_check(conds)["met"] is False and F.power_check(conds)["worst"] == "dropout-0.5"
    conds["dropout-0.5"] = {"vs_separate": {"mdd": math.nan}}  # n < 3: no MDD, so the target is not shown met
    pc = F.power_check(conds)
    assert pc["met"] is False and pc["missing"] == ["dropout-0.5"] and pc["worst"] == "rebalance"
    assert "not met" in F.power_words(pc) and "dropout-0.5" in F.power_words(pc)


def test_a_resumed_grid_keeps_the_time_of_its_earlier_invocations(tmp_path):
    settings = {"epochs": 5}
    first = {"dataset": "d", "total_seconds": 100.0, "runs": 9, "resumed_runs": 0, "seeds": [0], "settings": settings}
    path = tmp_path / "timing.json"
    assert reproduce.invocations(path, first) == [{"seconds": 100.0, "trained": 9, "resumed": 0, "seeds": 1}]
    path.write_text(__import__("json").dumps(first))  # an older timing.json: no invocations of its own
    second = {**first, "total_seconds": 30.0, "runs": 18, "resumed_runs": 9, "seeds": [0, 1]}
    assert [i["seconds"] for i in reproduce.invocations(path, second)] == [100.0, 30.0]
    assert reproduce.invocations(path, {**second, "resumed_runs": 0})[0]["seconds"] == 30.0  # trained afresh
    assert len(reproduce.invocations(path, {**second, "settings": {"epochs": 6}})) == 1     # another grid


def test_a_grid_short_of_its_planned_seeds_says_so():
    assert reproduce.grid_label(False, 2, 25) == reproduce.QUICK_LABEL
    assert reproduce.grid_label(True, 20, 25) == "partial: 25 seeds planned"
    assert reproduce.grid_label(True, 25, 25) is None and reproduce.grid_label(False, 30, 25) is None
