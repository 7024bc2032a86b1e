"""Derived quantities on a hand-written table: norms, learning speed, shares (skipped/NaN rows excluded)."""
import math

import numpy as np
import pandas as pd
import pytest

from dynamics.analysis.derived import learning_speed, norms, shares

TABLE = pd.DataFrame({
    "step":      [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "view":      ["a", "a", "b", "a", "a", "b", "a", "a", "b"],
    "layer":     ["a0", "a1", "b0"] * 3,
    "depth":     [0, 1, 0] * 3,
    "grad_sq":   [4.0, 5.0, 1.0, 9.0, np.nan, 1.0, 1.0, 3.0, 2.0],
    "param_sq":  [1.0, 2.0, 4.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0],
    "update_sq": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, np.nan],
    "lca":       [-3.0, -1.0, -4.0, -2.0, 5.0, 1.0, -1.0, -1.0, np.nan],
    "finite":    [True, True, True, True, False, True, True, True, True],
})


def test_norms_are_square_roots():
    out = norms(TABLE)
    assert out["grad_norm"].tolist()[:3] == [2.0, math.sqrt(5.0), 1.0]


def test_learning_speed_sums_then_divides_and_drops_unusable_steps():
    out = learning_speed(TABLE).set_index(["step", "view"])["learning_speed"]
    assert out[(0, "a")] == pytest.approx((4 + 5) / (1 + 2))
    assert out[(0, "b")] == pytest.approx(1 / 4)
    assert 1 not in out.index.get_level_values("step")  # a non-finite gradient drops the step for every view
    assert out[(2, "b")] == pytest.approx(2 / 4)        # a missing update does not hide the gradient


def test_skipped_steps_from_per_step_are_dropped():
    per_step = pd.DataFrame({"step": [0, 1, 2], "skipped": [False, False, True]})
    out = learning_speed(TABLE, per_step=per_step)
    assert sorted(out["step"].unique()) == [0]


def test_shares_of_loss_change():
    out = shares(TABLE).set_index(["step", "view"])["share"]
    assert out[(0, "a")] == pytest.approx(4 / 8) and out[(0, "b")] == pytest.approx(4 / 8)
    assert out[(2, "a")] == pytest.approx(1.0)         # b's lca is missing at step 2: not a share of 0


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="lca"):
        shares(TABLE.drop(columns="lca"))


def test_tables_of_several_runs_are_grouped_by_run():
    """On load_runs output (a run column) nothing is pooled across runs unless the column is dropped."""
    two = pd.concat([TABLE.assign(run="r1"), TABLE.assign(run="r2", lca=TABLE["lca"] * 3)], ignore_index=True)
    ls = learning_speed(two)
    assert list(ls.columns[:3]) == ["run", "step", "view"] and len(ls) == 2 * len(learning_speed(TABLE))
    sh = shares(two).set_index(["run", "step", "view"])["share"]
    assert sh[("r2", 0, "a")] == pytest.approx(4 / 8)  # within the run, not of both runs' sum
    pooled = shares(two.drop(columns="run")).set_index(["step", "view"])["share"]
    assert pooled[(0, "a")] == pytest.approx(4 / 8)
    assert len(norms(two)) == len(two)
