"""The report's one rule for p-values, intervals and MDDs (issue 24): checked against scipy and hand counts."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from dynamics.analysis import inference
from dynamics.analysis.inference import difference, sign_flip_test, t_interval


def test_resampled_sign_flip_p_is_b_plus_one_over_b_plus_one():
    """10 runs, 100 random sign patterns (2^10 > 100): p = (b + 1) / (B + 1), never 0."""
    d = np.linspace(1.0, 2.0, 10)
    signs = np.random.default_rng(0).choice((1.0, -1.0), size=(100, 10))  # the test's own seeded draw
    b = int(np.sum(np.abs(signs @ d / 10) >= d.mean() - 1e-12))
    out = sign_flip_test(d, n_resamples=100)
    assert not out["exact"] and out["p"] == pytest.approx((b + 1) / 101) and out["p"] > 0


def test_resampled_permutation_p_is_never_zero():
    x, y = np.arange(10.0) + 100, np.arange(10.0)  # C(20, 10) = 184756 splits > 50 resamples
    out = inference.permutation_test(x, y, n_resamples=50)
    assert not out["exact"] and out["p"] == pytest.approx(1 / 51)  # no random split is as extreme


def test_exact_sign_flip_distribution_by_hand_at_n3():
    d = [0.5, -1.0, 2.0]
    means = [abs(sum(s * v for s, v in zip(signs, d))) / 3 for signs in itertools.product((1, -1), repeat=3)]
    assert sign_flip_test(d)["p"] == pytest.approx(np.mean(np.array(means) >= abs(np.mean(d)) - 1e-12))


def test_n_below_three_gives_values_only():
    out = difference([0.80, 0.82], [0.85, 0.90], paired=True)
    assert out["difference"] == pytest.approx(0.065)
    assert all(np.isnan(out[k]) for k in ("lo", "hi", "p", "mdd", "p_exact"))
    assert out["method"].endswith("n = 2: values only")
    welch = difference([0.80, 0.82, 0.81], [0.85, 0.90], paired=False)
    assert np.isnan(welch["p"]) and welch["method"].endswith("n = 2: values only")
    assert np.isnan(sign_flip_test([1.0, 2.0])["p"]) and inference.values_only(2) == "n = 2: values only"
    assert np.isnan(inference.t_half_width(1.0, 2))


def test_logit_interval_stays_inside_zero_one_and_matches_scipy():
    auc = np.array([0.97, 0.99, 0.995])
    z = np.log(auc / (1 - auc))
    lo, hi = stats.t.interval(0.95, 2, loc=z.mean(), scale=stats.sem(z))
    expit = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    m, l, h = t_interval(auc, scale="logit")
    assert (m, l, h) == pytest.approx((expit(z.mean()), expit(lo), expit(hi)))
    assert 0 < l < h < 1 and t_interval(auc)[2] > 1  # the linear interval leaves the range
    assert inference.interval_method("logit") == "Student t over runs, logit scale"


def test_log_interval_for_losses_stays_positive_and_matches_scipy():
    loss = np.array([0.01, 0.05, 0.2])
    lo, hi = stats.t.interval(0.95, 2, loc=np.log(loss).mean(), scale=stats.sem(np.log(loss)))
    m, l, h = t_interval(loss, scale="log")
    assert (l, h) == pytest.approx((math.exp(lo), math.exp(hi))) and l > 0 > t_interval(loss)[1]


def test_scale_of_names_and_bounded_interval_at_the_bound():
    assert [inference.scale_of(n) for n in ("test_auc", "val_acc", "test_loss", "a/b ratio", "share")] == \
        ["logit", "logit", "log", "log", "linear"]
    m, lo, hi, method = inference.bounded_interval([0.98, 1.0, 0.99], "logit")
    ref = stats.t.interval(0.95, 2, loc=np.mean([0.98, 1.0, 0.99]), scale=stats.sem([0.98, 1.0, 0.99]))
    assert lo == pytest.approx(ref[0]) and hi == 1.0 and "clipped" in method
    assert inference.bounded_interval([0.9, 0.8, 0.85], "logit")[3] == "Student t over runs, logit scale"


def test_holm_levels_by_hand():
    levels = inference.holm_levels([0.01, 0.04, 0.03, np.nan], alpha=0.05)
    assert levels[:3] == pytest.approx([0.05 / 3, 0.05 / 1, 0.05 / 2]) and np.isnan(levels[3])


def test_one_student_t_implementation():
    from dynamics.analysis import metrics
    assert metrics.t_half_width is inference.t_half_width
    x = np.array([1.0, 2.0, 4.0, 3.0])
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert inference.t_half_width(x.std(ddof=1), 4) == pytest.approx(half)
