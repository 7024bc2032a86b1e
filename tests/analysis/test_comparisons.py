"""Conditions against a reference: pairing by seed, Welch otherwise, Holm across the table, hand-checked."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dynamics.analysis import compare_conditions


def values(ref, other, seeds_other=(0, 1, 2), quantity="test_auc", scale="linear"):
    rows = [dict(run=f"ref-{i}", group="ref", seed=i, quantity=quantity, value=v, scale=scale) for i, v in enumerate(ref)]
    rows += [dict(run=f"new-{s}", group="new", seed=s, quantity=quantity, value=v, scale=scale)
             for s, v in zip(seeds_other, other)]
    return pd.DataFrame(rows)


def test_paired_by_seed_when_seed_sets_match():
    ref, new = [0.85, 0.86, 0.88], [0.84, 0.87, 0.90]
    out = compare_conditions(values(ref, new)).iloc[0]
    t = stats.ttest_rel(new, ref)
    assert out.design == "paired t by seed (3 pairs)" and out.reference == "ref" and out.group == "new"
    assert out.difference == pytest.approx(np.mean(new) - np.mean(ref))
    assert (out.lo, out.hi) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert out.p == pytest.approx(t.pvalue) and out.p_holm == pytest.approx(t.pvalue)
    assert out.p_exact_min == 0.25 and out.mdd > abs(out.difference)


def test_pairs_follow_the_seed_not_the_row_order():
    ref, new = [0.85, 0.86, 0.88], [0.90, 0.84, 0.87]  # listed as seeds 2, 0, 1
    out = compare_conditions(values(ref, new, seeds_other=(2, 0, 1))).iloc[0]
    d = np.array([0.84, 0.87, 0.90]) - np.array(ref)
    assert out.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)


def test_welch_when_seeds_differ_and_log_scale():
    ref, new = [2.0, 4.0, 8.0], [1.0, 2.0, 2.0]
    out = compare_conditions(values(ref, new, seeds_other=(5, 6, 7), quantity="a/b ratio", scale="log")).iloc[0]
    t = stats.ttest_ind(np.log(new), np.log(ref), equal_var=False)
    assert out.design == "Welch t (3 and 3 runs)" and out.scale == "log"
    assert out.difference == pytest.approx(np.log(new).mean() - np.log(ref).mean())
    assert out.p == pytest.approx(t.pvalue)
    assert out.reference_mean == pytest.approx(4.0) and out.group_mean == pytest.approx(2 ** (2 / 3))


def test_holm_across_every_comparison_and_reference_choice():
    v = pd.concat([values([0.85, 0.86, 0.88], [0.84, 0.87, 0.90]),
                   values([1.0, 2.0, 3.0], [2.0, 3.5, 5.0], quantity="other")], ignore_index=True)
    out = compare_conditions(v).set_index("quantity")
    p = out["p"].to_numpy()
    lo, hi = sorted(p)
    assert sorted(out["p_holm"]) == pytest.approx([2 * lo, max(2 * lo, hi)])
    flipped = compare_conditions(v, reference="new")
    assert set(flipped["reference"]) == {"new"} and set(flipped["group"]) == {"ref"}
    with pytest.raises(ValueError, match="'nope'"):
        compare_conditions(v, reference="nope")


def test_one_run_per_condition_gives_no_number():
    out = compare_conditions(values([0.8], [0.9], seeds_other=(0,))).iloc[0]
    assert out.design.startswith("Welch") and math.isnan(out.p) and math.isnan(out.lo) and math.isnan(out.mdd)


def test_detectable_difference_at_alpha_and_after_correction():
    from dynamics.analysis import min_detectable_difference
    v = pd.concat([values([0.85, 0.86, 0.88], [0.84, 0.87, 0.90]),
                   values([1.0, 2.0, 3.0], [2.0, 3.5, 5.0], quantity="other")], ignore_index=True)
    out = compare_conditions(v).set_index("quantity").loc["test_auc"]
    se = np.std(np.array([0.84, 0.87, 0.90]) - np.array([0.85, 0.86, 0.88]), ddof=1) / math.sqrt(3)
    assert out.se == pytest.approx(se) and out.df == 2
    # Holm holds the smaller of the two p-values to 0.05 / 2 and the larger to 0.05: the MDD is at that level
    level = 0.025 if out.p <= compare_conditions(v).set_index("quantity").loc["other", "p"] else 0.05
    assert out.alpha_holm == pytest.approx(level)
    assert out.mdd == pytest.approx(min_detectable_difference(se, 2, alpha=level))


def _holm_by_hand(p):
    """Holm's step-down adjusted p-values and levels, written out (statsmodels is not available)."""
    p = list(p)
    order = sorted(range(len(p)), key=lambda i: p[i])
    m, adjusted, levels, running = len(p), [0.0] * len(p), [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i], levels[i] = running, 0.05 / (m - k)
    return adjusted, levels


def test_one_holm_family_with_the_reports_other_tests():
    from dynamics.analysis import min_detectable_difference
    from dynamics.analysis.comparisons import holm_family
    v = pd.concat([values([0.85, 0.86, 0.88], [0.84, 0.87, 0.90]),
                   values([1.0, 2.0, 3.0], [2.0, 3.5, 5.0], quantity="other")], ignore_index=True)
    own = compare_conditions(v)
    other = [0.001, 0.2, 0.04]
    out, adjusted_other = holm_family(own, other)
    adjusted, levels = _holm_by_hand(list(own["p"]) + other)
    assert list(out["p_holm"]) == pytest.approx(adjusted[:2]) and list(adjusted_other) == pytest.approx(adjusted[2:])
    assert list(out["alpha_holm"]) == pytest.approx(levels[:2])
    for r, level in zip(out.itertuples(), levels[:2]):
        assert r.mdd == pytest.approx(min_detectable_difference(r.se, r.df, alpha=level))


def test_two_runs_give_the_values_only():
    out = compare_conditions(values([0.85, 0.86], [0.84, 0.87], seeds_other=(0, 1))).iloc[0]
    assert out.design.endswith("n = 2: values only") and out.difference == pytest.approx(0.0)
    assert math.isnan(out.p) and math.isnan(out.lo) and math.isnan(out.mdd) and math.isnan(out.p_exact)
    assert out.reference_values == "0.85, 0.86" and out.group_values == "0.84, 0.87"
