"""dynamics.metrics against hand-computed values and an O(n^2) pair-count reference."""
import numpy as np
import pytest

from dynamics.analysis.metrics import accuracy, average_ranks, bootstrap_ci, roc_auc


def pair_count_auc(y, s):
    """Reference: fraction of (positive, negative) pairs ordered correctly, ties 1/2."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_average_ranks_ties():
    assert average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_hand_value():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # pairs: (0.5,0.5)=1/2, (0.5,0.2)=1, (0.9,0.5)=1, (0.9,0.2)=1 -> 3.5/4
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)


def test_auc_perfect_inverted_and_constant():
    assert roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert roc_auc([0, 1], [1.0, 0.0]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.3] * 4) == 0.5


def test_auc_against_pair_count_random_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 7, 60).astype(float)  # many ties
    assert roc_auc(y, s) == pytest.approx(pair_count_auc(y, s))


def test_auc_string_labels_larger_is_positive():
    assert roc_auc(["a", "a", "b", "b"], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_one_class_is_nan():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_auc_two_column_scores_use_column_one():
    s = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert roc_auc([0, 0, 1, 1], s) == pytest.approx(0.75)


def test_auc_multiclass_macro_ovr_hand_value():
    y = [0, 1, 2, 0]
    s = [[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.25, 0.6, 0.15]]
    # class 0: 3/4, class 1: 2/3, class 2: 1
    assert roc_auc(y, s) == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)


def test_auc_errors():
    with pytest.raises(ValueError, match="rows"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_accuracy_labels_scores_threshold():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy([0, 1, 2], [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]]) == pytest.approx(2 / 3)
    assert accuracy([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.6], threshold=0.5) == 0.5


def test_bootstrap_constant_and_degenerate():
    est, lo, hi = bootstrap_ci(np.mean, np.full(20, 3.0), n_boot=50)
    assert (est, lo, hi) == (3.0, 3.0, 3.0)
    est, lo, hi = bootstrap_ci(np.mean, np.array([2.0]))
    assert est == 2.0 and np.isnan(lo) and np.isnan(hi)


def test_bootstrap_mean_width_matches_normal_theory():
    x = np.random.default_rng(0).normal(size=400)
    est, lo, hi = bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    assert est == pytest.approx(x.mean())
    assert lo < est < hi
    expected = 2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (hi - lo) == pytest.approx(expected, rel=0.15)


def test_bootstrap_auc_joint_resampling_drops_one_class_draws():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.3, 0.7, 0.2, 0.4])
    est, lo, hi = bootstrap_ci(roc_auc, y, s, n_boot=300)
    assert est == pytest.approx(pair_count_auc(y, s))
    assert 0.0 <= lo <= hi <= 1.0


# ---------------------------------------------------------------------------------------- DeLong's variance
def _delong_brute(y, s):
    """DeLong et al. (1988) written out: ψ(x, y) = 1 if x > y, ½ if tied, 0 else, by explicit double loops."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    psi = [[1.0 if a > b else 0.5 if a == b else 0.0 for b in neg] for a in pos]
    m, n = len(pos), len(neg)
    auc = sum(map(sum, psi)) / (m * n)
    v10 = [sum(row) / n for row in psi]
    v01 = [sum(psi[i][j] for i in range(m)) / m for j in range(n)]
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def test_delong_matches_the_structural_components_by_double_loops():
    from dynamics.analysis.metrics import delong_covariance, delong_variance
    y = [1, 0, 1, 1, 0, 0, 1, 0, 0]
    s = [0.9, 0.3, 0.3, 0.7, 0.8, 0.1, 0.5, 0.3, 0.2]  # ties inside and across the classes
    auc, var = _delong_brute(y, s)
    assert delong_variance(y, s) == pytest.approx(var, rel=1e-12)
    assert roc_auc(y, s) == pytest.approx(auc)
    s2 = [0.2, 0.1, 0.6, 0.9, 0.4, 0.5, 0.3, 0.0, 0.7]
    aucs, cov = delong_covariance(y, np.column_stack([s, s2]))
    # the variance of the difference, by double loops on the difference of the kernels
    diff_var = _delong_brute(y, s)[1] + _delong_brute(y, s2)[1] - 2 * cov[0, 1]
    pos, neg = [i for i in range(9) if y[i]], [i for i in range(9) if not y[i]]
    k = lambda sc, i, j: 1.0 if sc[i] > sc[j] else 0.5 if sc[i] == sc[j] else 0.0
    d10 = [sum(k(s, i, j) - k(s2, i, j) for j in neg) / len(neg) for i in pos]
    d01 = [sum(k(s, i, j) - k(s2, i, j) for i in pos) / len(pos) for j in neg]
    ref = np.var(d10, ddof=1) / len(pos) + np.var(d01, ddof=1) / len(neg)
    assert diff_var == pytest.approx(ref, rel=1e-12)
    assert aucs[1] == pytest.approx(roc_auc(y, s2))


def test_delong_variance_matches_the_sampling_variance_by_simulation():
    """Binormal scores, 40 positives and 60 negatives: DeLong's mean variance within 15% of the variance of
    the AUC over 1,500 independent test sets (its large-sample consistency; the Monte Carlo error is ~4%)."""
    from dynamics.analysis.metrics import delong_variance
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(60)]
    aucs, vars_ = [], []
    for _ in range(1500):
        s = rng.standard_normal(100) + 1.0 * y
        aucs.append(roc_auc(y, s))
        vars_.append(delong_variance(y, s))
    assert np.mean(vars_) / np.var(aucs, ddof=1) == pytest.approx(1.0, abs=0.15)


def test_delong_needs_two_of_each_class():
    from dynamics.analysis.metrics import delong_variance
    with pytest.raises(ValueError, match="at least 2 positives and 2 negatives"):
        delong_variance([1, 0, 0], [0.1, 0.2, 0.3])
