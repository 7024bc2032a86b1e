"""dynamics.analysis against hand-computed values on small synthetic tables.

The fixture: views ``a`` and ``b`` with two layers each (depth 0 and 1, one tensor per layer) and a
``shared`` head, steps 0..8 (phases: 0-2 early, 3-5 middle, 6-8 late). Per step, before scaling:

    tensor   grad_sq  param_sq  update_sq  lca
    a.0        9        1         1        -1
    a.1       16        1         3        -2
    b.0        1        2         0.5      -0.5
    b.1        4        2         0.5      -0.5
    b.frozen   0      100         0         0    (has_grad False -> excluded)
    head       1        1         1        -1

In the late phase a's grad_sq is multiplied by 4. Step 1 is skipped by the optimizer and step 4 has
a non-finite gradient in b.0: both steps are garbage and must be dropped for every view.
So: grad norm a = 5 (10 late), b = sqrt(5); loss shares a 0.6, b 0.2, shared 0.2.
"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dynamics import analysis

ROWS = [  # param, view, layer, depth, grad_sq, param_sq, update_sq, lca, has_grad
    ("a.0", "a", "a.l0", 0, 9.0, 1.0, 1.0, -1.0, True),
    ("a.1", "a", "a.l1", 1, 16.0, 1.0, 3.0, -2.0, True),
    ("b.0", "b", "b.l0", 0, 1.0, 2.0, 0.5, -0.5, True),
    ("b.1", "b", "b.l1", 1, 4.0, 2.0, 0.5, -0.5, True),
    ("b.frozen", "b", "b.l1", 1, 0.0, 100.0, 0.0, 0.0, False),
    ("head", "shared", "head", 0, 1.0, 1.0, 1.0, -1.0, True),
]
USED = [0, 2, 3, 5, 6, 7, 8]


def make_run(b_scale=1.0, garbage=True):
    recs = []
    for step in range(9):
        for p, v, layer, depth, g, th, u, lca, has in ROWS:
            g = g * (4.0 if (v == "a" and step >= 6) else 1.0) * (b_scale if v == "b" else 1.0)
            finite = True
            if garbage and step in (1, 4):
                g, u, lca = g * 1000, u * 1000, lca * 1000
            if garbage and step == 4 and p == "b.0":
                g, finite = math.inf, False
            if garbage and step == 1:
                u, lca = math.nan, math.nan
            recs.append(dict(step=step, param=p, view=v, layer=layer, depth=depth, grad_sq=g, param_sq=th,
                             update_sq=u, lca=lca, finite=finite, has_grad=has))
    df = pd.DataFrame(recs)
    for c in ("param", "view", "layer"):
        df[c] = pd.Categorical(df[c], categories=list(dict.fromkeys(df[c])))
    df["depth"] = df["depth"].astype("int32")
    steps = pd.DataFrame({"step": range(9), "recorded": True, "skipped": [s == 1 for s in range(9)],
                          "clip_factor": np.nan, "lr_0": 0.1})
    return df, steps


@pytest.fixture
def run():
    return make_run()


def two_runs():
    p1, s1 = make_run()
    p2, s2 = make_run(b_scale=4.0)  # b's gradient norm doubles: ratio halves
    parts = []
    for name, seed, p, s in (("r1", 1, p1, s1), ("r2", 2, p2, s2)):
        parts.append((p.assign(run=name, condition="base", seed=seed), s.assign(run=name, condition="base", seed=seed)))
    pp = pd.concat([p for p, _ in parts], ignore_index=True)
    ps = pd.concat([s for _, s in parts], ignore_index=True)
    for c in ("param", "view", "layer"):
        pp[c] = pd.Categorical(pp[c].astype(str), categories=list(dict.fromkeys(p1[c].astype(str))))
    pp["run"] = pp["run"].astype("category")
    pp["seed"] = pp["seed"].astype("Int64")
    return pp, ps


def test_clean_drops_skipped_nonfinite_and_gradless(run):
    pp, ps = run
    out = analysis.clean(pp, ps)
    assert sorted(out["step"].unique()) == USED
    assert "b.frozen" not in set(out["param"].astype(str))
    assert len(out) == len(USED) * 5
    # phases on the full recorded range 0..8
    phases = out.drop_duplicates("step").set_index("step")["phase"].astype(str)
    assert phases.to_dict() == {0: "early", 2: "early", 3: "middle", 5: "middle", 6: "late", 7: "late", 8: "late"}


def test_clean_without_per_step_keeps_skipped_step_but_not_nonfinite(run):
    pp, _ = run
    out = analysis.clean(pp)
    assert 1 in set(out["step"]) and 4 not in set(out["step"])


def test_clean_missing_column_is_named(run):
    pp, ps = run
    with pytest.raises(ValueError, match="lca"):
        analysis.clean(pp.drop(columns="lca"), ps)


def test_exclusions_counts(run):
    ex = analysis.exclusions(*run).iloc[0]
    assert (ex.recorded_steps, ex.used_steps, ex.skipped_steps, ex.nonfinite_steps) == (9, 7, 1, 1)


def test_view_dynamics_hand_values(run):
    vd = analysis.view_dynamics(*run).set_index(["view", "step"])
    a0, b0, h0 = vd.loc[("a", 0)], vd.loc[("b", 0)], vd.loc[("shared", 0)]
    assert a0.grad_norm == pytest.approx(5.0)
    assert vd.loc[("a", 6)].grad_norm == pytest.approx(10.0)
    assert b0.grad_norm == pytest.approx(math.sqrt(5))
    assert a0.layer_grad_norm == pytest.approx(3.5)  # mean of 3 and 4
    assert b0.layer_grad_norm == pytest.approx(1.5)  # mean of 1 and 2
    assert a0.update_norm == pytest.approx(2.0)
    assert a0.learning_speed == pytest.approx(25 / 2)
    assert b0.learning_speed == pytest.approx(5 / 4)  # frozen tensor's 100 excluded
    assert (a0.lca, b0.lca, h0.lca) == pytest.approx((-3.0, -1.0, -1.0))
    # cumulative over the used steps only: at step 5 four steps (0, 2, 3, 5) have been used
    assert vd.loc[("a", 5)].cum_lca == pytest.approx(-12.0)
    assert vd.loc[("a", 5)].loss_reduction == pytest.approx(12.0)
    assert (vd.loc[("a", 5)].share, vd.loc[("b", 5)].share, vd.loc[("shared", 5)].share) == pytest.approx((0.6, 0.2, 0.2))
    assert vd.loc[("a", 2)].step_share == pytest.approx(0.6)
    assert set(vd.index.get_level_values("step")) == set(USED)


def test_layer_dynamics_hand_values(run):
    ld = analysis.layer_dynamics(*run).set_index(["view", "depth", "step"])
    assert ld.loc[("a", 1, 0)].grad_norm == pytest.approx(4.0)
    assert ld.loc[("b", 1, 0)].learning_speed == pytest.approx(4 / 2)
    assert ld.loc[("b", 1, 0)].layer == "b.l1"


def test_matched_depth_ratios(run):
    md = analysis.matched_depth(*run)
    assert md.attrs["view_a"] == "a" and md.attrs["view_b"] == "b"
    r = md.set_index(["depth", "step"])["ratio"]
    assert r[(0, 0)] == pytest.approx(3.0) and r[(1, 0)] == pytest.approx(2.0)
    assert r[(0, 7)] == pytest.approx(6.0) and r[(1, 7)] == pytest.approx(4.0)
    assert md.set_index(["depth", "step"])["log2_ratio"][(1, 0)] == pytest.approx(1.0)


def test_matched_depth_errors_name_view(run):
    with pytest.raises(ValueError, match="'zz'"):
        analysis.matched_depth(*run, views=("a", "zz"))
    with pytest.raises(ValueError, match="quantity"):
        analysis.matched_depth(*run, quantity="nope")


T975 = {1: 12.706204736174706, 2: 4.302652729749464}  # Student t quantiles t(0.975, df), from tables


def test_matched_layers_and_paired_test_single_run(run):
    ml = analysis.matched_layers(*run, phase="early").set_index("depth")
    assert ml.loc[0, "ratio"] == pytest.approx(3.0) and ml.loc[1, "ratio"] == pytest.approx(2.0)
    assert ml.loc[0, "frac_steps_a_gt_b"] == 1.0 and ml.loc[0, "n_steps"] == 2
    t = analysis.paired_test(ml)
    # one run: its two layers are description; no interval, and no test below three runs
    assert (t["n_runs"], t["n_pairs"], t["n_a_greater"], t["fraction"]) == (1, 2, 2, 1.0)
    assert t["geo_mean_ratio"] == pytest.approx(math.sqrt(6))
    assert np.isnan(t["lo"]) and np.isnan(t["p"]) and t["p_min"] == 1.0  # one run: no test


def test_paired_test_is_over_runs_hand_values():
    # three runs of two layers: per-run mean ln(a/b) = ln 4, ln 2, ln 4 (every layer a > b)
    m = pd.DataFrame({"run": ["r1", "r1", "r2", "r2", "r3", "r3"], "a": [2.0, 8.0, 1.0, 4.0, 4.0, 4.0],
                      "b": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]})
    t = analysis.paired_test(m)
    x = np.log([4.0, 2.0, 4.0])
    half = T975[2] * x.std(ddof=1) / math.sqrt(3)
    assert t["geo_mean_ratio"] == pytest.approx(2 ** (5 / 3))
    assert (t["lo"], t["hi"]) == pytest.approx((math.exp(x.mean() - half), math.exp(x.mean() + half)))
    assert t["p"] == 0.25 and t["p_min"] == 0.25  # 6 layers all agree, yet 3 runs cannot give p < 0.25
    assert (t["n_runs"], t["n_pairs"], t["n_a_greater"]) == (3, 6, 5)
    per_run = analysis.per_run_layer_ratio(m).set_index("run")
    assert per_run.loc["r2", "log_ratio"] == pytest.approx(math.log(2)) and per_run.loc["r3", "n_a_greater"] == 2


def test_conditional_learning_speed(run):
    cls = analysis.conditional_learning_speed(*run).set_index("step")
    # per step, branch speed = sum ||g||^2 / sum ||theta||^2: a = (9 + 16) / 2 = 12.5 (x4 late); b = 5 / 4
    assert cls.loc[0, "speed"] == pytest.approx(math.log(10))
    # at step 6: a = 4 * 12.5 + 50 = 100, b = 5 * 1.25 = 6.25
    assert cls.loc[6, "s_a"] == pytest.approx(100) and cls.loc[6, "speed"] == pytest.approx(math.log(16))
    win = analysis.conditional_learning_speed(*run, window=1).set_index("step")
    assert win.loc[6, "speed"] == pytest.approx(math.log(40))


def test_run_summary_phases(run):
    rs = analysis.run_summary(*run).set_index(["phase", "view"])
    assert rs.loc[("early", "a"), "grad_norm"] == pytest.approx(5.0)
    assert rs.loc[("late", "a"), "grad_norm"] == pytest.approx(10.0)
    assert rs.loc[("all", "a"), "grad_norm"] == pytest.approx((5 * 4 + 10 * 3) / 7)
    assert rs.loc[("late", "a"), "loss_reduction"] == pytest.approx(9.0)
    assert rs.loc[("all", "b"), "share"] == pytest.approx(0.2)
    assert rs.loc[("middle", "a"), "n_steps"] == 2


def test_imbalance_summary_single_run_has_no_interval(run):
    s = analysis.imbalance_summary(*run).set_index("phase")
    assert s.loc["early", "grad_ratio"] == pytest.approx(5 / math.sqrt(5))
    assert s.loc["late", "grad_ratio"] == pytest.approx(10 / math.sqrt(5))
    assert s.loc["all", "leads"] == "neither"  # one run: no interval, so no leader
    assert s.loc["all", "share_a"] == pytest.approx(0.6)
    assert s.loc["all", "n_runs"] == 1
    assert np.isnan(s.loc["all", "grad_ratio_lo"]) and np.isnan(s.loc["all", "share_a_hi"])
    assert s.loc["all", "n_pairs"] == 2 and s.loc["all", "n_a_greater"] == 2
    assert s.loc["all", "p_min"] == 1.0 and s.loc["all", "interval"] == "Student t over runs"


def test_imbalance_summary_two_seeds_t_over_runs():
    pp, ps = two_runs()
    s = analysis.imbalance_summary(pp, ps).set_index("phase")
    # early ratios: run 1 sqrt(5), run 2 5/sqrt(20) = sqrt(5)/2 -> geometric mean sqrt(5/2)
    e = s.loc["early"]
    assert e.n_runs == 2
    assert e.grad_ratio == pytest.approx(math.sqrt(5 / 2))
    # n = 2: no interval and no test, the per-run values instead
    assert np.isnan(e.grad_ratio_lo) and np.isnan(e.grad_ratio_hi) and np.isnan(e.p) and e.p_min == 0.5
    assert e.grad_ratio_values == f"{math.sqrt(5):.4g}, {math.sqrt(5) / 2:.4g}"
    # matched layers, early: run 1 ratios 3 and 2, run 2 (b x 2) 1.5 and 1 -> per run ln sqrt(6), ln sqrt(1.5)
    assert e.layer_ratio == pytest.approx(math.sqrt(math.sqrt(6) * math.sqrt(1.5)))
    assert s.loc["all", "n_pairs"] == 4  # 2 depths x 2 seeds: description
    per_run = analysis.imbalance_summary(pp, ps, by=None)
    assert list(dict.fromkeys(per_run["group"])) == ["r1", "r2"]
    with pytest.raises(ValueError, match="'lr'"):
        analysis.imbalance_summary(pp, ps, by="lr")


def _three_views():
    recs = []
    for step in range(3):
        for v, lca, g in (("x", -1.0, 4.0), ("y", -2.0, 1.0), ("z", -3.0, 9.0)):
            recs.append(dict(step=step, view=v, layer=f"{v}.l", depth=0, grad_sq=g, param_sq=1.0, update_sq=1.0,
                             lca=lca))
    return pd.DataFrame(recs)


def test_three_views_every_pair_shares_and_dominant():
    pp = _three_views()
    vd = analysis.view_dynamics(pp).set_index(["view", "step"])
    assert [vd.loc[(v, 2), "share"] for v in "xyz"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert vd.loc[("z", 2), "cum_lca"] == pytest.approx(-9.0)
    s = analysis.imbalance_summary(pp)
    s = s[s["phase"] == "all"].set_index(["view_a", "view_b"])
    assert list(s.index) == [("x", "y"), ("x", "z"), ("y", "z")]  # every pair, in view order
    assert (s["leads"] == "neither").all()  # one run
    assert s["grad_ratio"].tolist() == pytest.approx([2.0, 2 / 3, 1 / 3])
    assert s.loc[("y", "z"), "share_b"] == pytest.approx(0.5)
    s2 = analysis.imbalance_summary(pp, views=("z", "x")).set_index("phase")
    assert s2.loc["all", "grad_ratio"] == pytest.approx(1.5)
    rs = analysis.run_summary(pp)
    shares = analysis.view_shares(rs, analysis.run_groups(pp, None))
    allp = shares[shares["phase"] == "all"].set_index("view")
    assert allp["share"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert allp["n_largest"].tolist() == [0, 0, 1]


def test_view_pairs_use_views_every_run_recorded():
    pp = _three_views()
    two = pp[pp["view"] != "z"].assign(run="r2")
    both = pd.concat([pp.assign(run="r1"), two], ignore_index=True)
    assert analysis.view_pairs(both) == [("x", "y")]  # z is only in r1
    assert analysis.view_pairs(both, views=["x", "y", "z"]) == [("x", "y"), ("x", "z"), ("y", "z")]
    with pytest.raises(ValueError, match="'q'"):
        analysis.view_pairs(both, views=["x", "q"])


def test_share_is_nan_when_loss_rose():
    pp = pd.DataFrame(dict(step=[0, 0], view=["a", "b"], layer=["a", "b"], depth=[0, 0], grad_sq=1.0,
                           param_sq=1.0, update_sq=1.0, lca=[1.0, 0.5]))
    assert analysis.view_dynamics(pp)["share"].isna().all()


def test_user_metrics_last_logged_value():
    ps = pd.DataFrame({"step": [0, 1, 2, 3], "recorded": True, "skipped": False, "lr_0": 0.1,
                       "loss": [2.0, 1.5, np.nan, 1.0], "val_auc": [np.nan, 0.7, np.nan, np.nan],
                       "run": "r1"})
    um = analysis.user_metrics(ps).set_index("run")
    assert um.loc["r1", "val_auc"] == 0.7 and um.loc["r1", "loss"] == 1.0
    assert "lr_0" not in um.columns and "skipped" not in um.columns


def test_empty_and_all_excluded_raise(run):
    pp, ps = run
    with pytest.raises(ValueError, match="no rows"):
        analysis.view_dynamics(pp.iloc[:0])
    with pytest.raises(ValueError, match="no usable rows"):
        analysis.imbalance_summary(pp, ps.assign(skipped=True))


def test_probe_residuals_ratio_of_sums_by_hand():
    ps = pd.DataFrame({"run": ["r"] * 4, "step": [0, 1, 2, 3],
                       "probe_change": [-0.5, np.nan, 0.25, -0.25],
                       "probe_residual_first": [0.1, np.nan, -0.05, 0.05],
                       "probe_residual_trapezoid": [0.01, np.nan, 0.0, -0.01],
                       "probe_residual_simpson": [0.0, np.nan, 0.001, 0.0]})
    out = analysis.probe_residuals(ps).iloc[0]
    assert out["probed_steps"] == 3
    assert out["relative_residual_first"] == pytest.approx(0.2 / 1.0)
    assert out["relative_residual_trapezoid"] == pytest.approx(0.02)
    assert out["relative_residual_simpson"] == pytest.approx(0.001)
    assert analysis.probe_residuals(ps.drop(columns="probe_change")).empty


def test_conditional_learning_speed_sums_before_dividing():
    """Layers of unequal size: the branch ratio of sums, not the sum of per-layer ratios."""
    pp = pd.DataFrame({"step": [0, 0, 0], "view": ["a", "a", "b"], "layer": ["a0", "a1", "b0"], "depth": [0, 1, 0],
                       "grad_sq": [4.0, 4.0, 1.0], "param_sq": [1.0, 3.0, 1.0], "update_sq": [1.0, 1.0, 1.0],
                       "lca": [-1.0, -1.0, -1.0]})
    cls = analysis.conditional_learning_speed(pp)
    assert cls["speed"].iloc[0] == pytest.approx(math.log((4 + 4) / (1 + 3)))  # not log(4 + 4/3)


def test_pair_rows_say_which_of_the_two_leads():
    """Three runs of three views: z has the largest share over all views, but on the x/y row x leads (its
    matched-layer ratio to y is 2, 2.2 and 1.8 by run: the t-interval over runs lies above 1)."""
    frames = []
    for k, f in enumerate((1.0, 1.21, 0.81)):
        pp = _three_views()
        pp.loc[pp["view"] == "y", "grad_sq"] /= f  # x/y norm ratio 2 * sqrt(f)
        frames.append(pp.assign(run=f"r{k}", condition="c", seed=k))
    pp = pd.concat(frames, ignore_index=True)
    s = analysis.imbalance_summary(pp)
    s = s[s["phase"] == "all"].set_index(["view_a", "view_b"])
    assert s.loc[("x", "y"), "leads"] == "x" and s.loc[("y", "z"), "leads"] == "z"
    x = np.log(2 * np.sqrt([1.0, 1.21, 0.81]))
    lo = math.exp(x.mean() - stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3))
    assert s.loc[("x", "y"), "layer_ratio_lo"] == pytest.approx(lo) and lo > 1
