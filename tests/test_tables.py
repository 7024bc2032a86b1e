"""Derived quantities on a hand-written table: norms, learning speed, shares (skipped/NaN rows excluded)."""
import math

import numpy as np
import pandas as pd
import pytest

from dynamics.tables import learning_speed, norms, shares

TABLE = pd.DataFrame({
    "step":      [0, 0, 0, 1, 1, 1],
    "view":      ["a", "a", "b", "a", "a", "b"],
    "grad_sq":   [4.0, 5.0, 1.0, 9.0, np.nan, 1.0],
    "param_sq":  [1.0, 2.0, 4.0, 1.0, 1.0, 1.0],
    "update_sq": [1.0, 1.0, 1.0, 1.0, 1.0, np.nan],
    "lca":       [-3.0, -1.0, -4.0, -2.0, 5.0, np.nan],
    "finite":    [True, True, True, True, False, True],
})


def test_norms_are_square_roots():
    out = norms(TABLE)
    assert out["grad_norm"].tolist()[:3] == [2.0, math.sqrt(5.0), 1.0]


def test_learning_speed_sums_then_divides_and_drops_unusable_rows():
    out = learning_speed(TABLE).set_index(["step", "view"])["learning_speed"]
    assert out[(0, "a")] == pytest.approx((4 + 5) / (1 + 2))
    assert out[(0, "b")] == pytest.approx(1 / 4)
    assert out[(1, "a")] == pytest.approx(9 / 1)   # the non-finite row is excluded
    assert (1, "b") not in out                      # the skipped row (no update) is excluded


def test_shares_of_loss_change():
    out = shares(TABLE).set_index(["step", "view"])["share"]
    assert out[(0, "a")] == pytest.approx(4 / 8) and out[(0, "b")] == pytest.approx(4 / 8)
    assert out[(1, "a")] == pytest.approx(1.0)


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="lca"):
        shares(TABLE.drop(columns="lca"))
