"""Inference over runs against hand-computed values, scipy's own tests, and simulation (coverage, power)."""
import math

import numpy as np
import pytest
from scipy import stats

from dynamics.analysis import inference
from dynamics.analysis.inference import (difference, holm, min_detectable_difference, permutation_test,
                                         sign_flip_test, smallest_p, t_interval)

T975 = {1: 12.706204736174706, 2: 4.302652729749464, 4: 2.7764451051977987}  # Student t quantiles, from tables


def test_t_interval_hand_values():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    half = T975[2] / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2 - half, 2 + half))
    g, glo, ghi = t_interval([1.0, 2.0, 4.0], log=True)  # logs 0, ln2, ln4: geometric mean 2, sd ln2
    h = T975[2] * math.log(2) / math.sqrt(3)
    assert (g, glo, ghi) == pytest.approx((2.0, 2 * math.exp(-h), 2 * math.exp(h)))
    one = t_interval([5.0, np.nan])
    assert one[0] == 5.0 and np.isnan(one[1]) and np.isnan(one[2])  # one run: no interval
    two = t_interval([1.0, 4.0], log=True)  # n = 2: the geometric mean, no interval
    assert two[0] == pytest.approx(2.0) and np.isnan(two[1]) and np.isnan(two[2])
    assert all(np.isnan(t_interval([]))) and t_interval([-1.0, 2.0], log=True)[0] == 2.0


def test_sign_flip_test_enumerates_every_sign_pattern():
    assert sign_flip_test([0.3, 1.0, 2.0]) == {"n": 3, "p": 0.25, "p_min": 0.25, "exact": True}
    # d = (1, -2, 3): sums over the 8 sign patterns are ±2, ±4, ±6, 0, 0; |sum| >= 2 in 6 of 8
    assert sign_flip_test([1.0, -2.0, 3.0])["p"] == pytest.approx(0.75)
    assert sign_flip_test([1.0] * 6)["p"] == pytest.approx(2 / 64)
    assert np.isnan(sign_flip_test([1.0, 2.0])["p"]) and sign_flip_test([1.0])["p_min"] == 1.0  # n < 3: no test
    assert smallest_p(3) == 0.25 and smallest_p(3, 3) == pytest.approx(0.1)


def test_permutation_test_two_samples_hand_value():
    # 20 ways to pick 3 of 6; only the two extreme labelings are as far apart as the observed one
    assert permutation_test([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])["p"] == pytest.approx(0.1)
    # (1, 3, 5) vs (2, 4, 6): the 20 splits of 6, enumerated below
    import itertools
    pooled = [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
    diffs = [abs(sum(pooled[i] for i in c) / 3 - sum(pooled[i] for i in range(6) if i not in c) / 3)
             for c in itertools.combinations(range(6), 3)]
    expected = np.mean(np.array(diffs) >= 1 - 1e-12)
    assert permutation_test([1.0, 3.0, 5.0], [2.0, 4.0, 6.0])["p"] == pytest.approx(expected)
    assert np.isnan(permutation_test([1.0, 3.0], [2.0, 4.0])["p"])  # two runs a side: no test


def test_difference_paired_and_welch_match_scipy():
    a, b = np.array([0.85, 0.86, 0.88]), np.array([0.84, 0.87, 0.90])
    paired = difference(a, b, paired=True)
    ref = stats.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert paired["difference"] == pytest.approx((b - a).mean())
    assert (paired["lo"], paired["hi"], paired["p"]) == pytest.approx((ci.low, ci.high, ref.pvalue))
    assert paired["p_exact"] == pytest.approx(sign_flip_test(b - a)["p"]) and paired["df"] == 2
    welch = difference(a, b, paired=False)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (welch["lo"], welch["hi"], welch["p"]) == pytest.approx((ci.low, ci.high, ref.pvalue))
    assert welch["method"] == "Welch t (3 and 3 runs)" and paired["method"] == "paired t by seed (3 pairs)"
    few = difference([1.0], [2.0], paired=False)
    assert few["difference"] == 1.0 and np.isnan(few["lo"]) and np.isnan(few["p"]) and np.isnan(few["mdd"])


def test_min_detectable_difference_has_the_power_it_claims():
    """At the MDD the two-sided paired t-test rejects in 80% of simulated experiments (scipy's test)."""
    n, sd = 5, 1.0
    mdd = min_detectable_difference(sd / math.sqrt(n), n - 1)
    rng = np.random.default_rng(1)
    d = rng.normal(mdd, sd, size=(20000, n))
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    # sd estimated per experiment: the noncentral-t power is exact for a known design, so this matches it
    assert np.mean(p < 0.05) == pytest.approx(0.80, abs=0.015)
    # the grid's test AUC: spread 0.020 over 3 seeds per arm (unpaired, df 4) -> about 0.06
    assert min_detectable_difference(0.02 * math.sqrt(2 / 3), 4) == pytest.approx(0.0614, abs=5e-4)
    assert np.isnan(min_detectable_difference(float("nan"), 2))


def test_holm_hand_values():
    out = holm([0.01, 0.04, 0.03, np.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(out[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_covers_95_percent_on_known_distributions(n):
    """Empirical coverage of the 95% interval over n runs, 20,000 simulated experiments per distribution."""
    rng = np.random.default_rng(n)
    reps = 20000
    cases = {  # name: (draws, true mean, log)
        "normal (test AUC-like)": (rng.normal(0.86, 0.02, (reps, n)), 0.86, False),
        "beta(20, 8) (a share)": (rng.beta(20, 8, (reps, n)), 20 / 28, False),
        "laplace (heavy tails)": (rng.laplace(1.0, 0.5, (reps, n)), 1.0, False),
        "t with 5 df": (rng.standard_t(5, (reps, n)), 0.0, False),
        "log-normal ratio (geometric)": (np.exp(rng.normal(math.log(4.0), 0.3, (reps, n))), 4.0, True),
    }
    for name, (x, truth, log) in cases.items():
        _, lo, hi = t_interval(x, log=log, axis=1)
        coverage = np.mean((lo <= truth) & (truth <= hi))
        assert coverage >= 0.92, f"{name}, n={n}: coverage {coverage:.3f}"


def test_interval_method_is_named():
    assert inference.INTERVAL == "Student t over runs"
