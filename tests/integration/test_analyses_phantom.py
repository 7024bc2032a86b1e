"""Phantom: determinism, caching, label mix, and the projection geometry against closed-form references."""
import math

import numpy as np
import pytest
import torch

from analyses.datasets import phantom
from analyses.datasets.phantom import PhantomConfig

SMALL = dict(n=40, size=32)


def test_same_seed_same_images_other_seed_differs():
    a = phantom.generate(PhantomConfig(**SMALL, seed=3))
    b = phantom.generate(PhantomConfig(**SMALL, seed=3))
    c = phantom.generate(PhantomConfig(**SMALL, seed=4))
    for k in ("cc", "mlo", "y", "lesion"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["cc"], c["cc"])
    assert a["cc"].shape == a["mlo"].shape == (40, 32, 32) and a["cc"].dtype == np.float16


def test_case_does_not_depend_on_n():
    a = phantom.generate(PhantomConfig(n=10, size=32))
    b = phantom.generate(PhantomConfig(n=40, size=32))
    np.testing.assert_array_equal(a["mlo"], b["mlo"][:10])


def test_labels_and_lesions_consistent():
    a = phantom.generate(PhantomConfig(n=128, size=32, prevalence=0.5))
    y, lesion = a["y"], a["lesion"]
    assert 0.3 < y.mean() < 0.7
    malignant_marks = (lesion & 3) > 0          # spiculated mass or calcifications
    assert np.array_equal(malignant_marks, y == 1)  # every malignant case has one, no benign case does
    assert not np.any((lesion & 4 > 0) & (y == 1))  # smooth round masses only in benign cases


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
    cfg = PhantomConfig(**SMALL)
    first = phantom.load_arrays(cfg, tmp_path)
    assert (tmp_path / "phantom" / f"{cfg.key()}.npz").exists()
    monkeypatch.setattr(phantom, "generate", lambda cfg: pytest.fail("regenerated although cached"))
    second = phantom.load_arrays(cfg, tmp_path)
    np.testing.assert_array_equal(first["cc"], second["cc"])
    assert PhantomConfig(**SMALL, difficulty=0.9).key() != cfg.key()


def test_fresh_and_cached_splits_are_the_same_tensors(tmp_path):
    """A run must not depend on whether its data was just generated or read from the cache: same values and the
    same (contiguous) memory layout, which steers how randn_like fills noise of that shape."""
    cfg = PhantomConfig(**SMALL)
    fresh = phantom.load(cfg, root=tmp_path)   # generates, writes the cache
    cached = phantom.load(cfg, root=tmp_path)  # reads it
    for view in ("cc", "mlo"):
        a, b = fresh.train.views[view], cached.train.views[view]
        assert torch.equal(a, b) and a.stride() == b.stride() and a.is_contiguous()
        torch.manual_seed(0)
        noise_a = torch.randn_like(a)
        torch.manual_seed(0)
        assert torch.equal(noise_a, torch.randn_like(b))


def test_splits_stratified(tmp_path):
    s = phantom.load(PhantomConfig(n=200, size=32), root=tmp_path)
    assert len(s.train) + len(s.val) + len(s.test) == 200
    assert s.train.views["cc"].shape[1:] == (1, 32, 32)
    rates = [d.y.mean().item() for d in (s.train, s.val, s.test)]
    assert max(rates) - min(rates) < 0.05
    assert not set(s.train.ids) & set(s.test.ids)


def test_oblique_projection_of_uniform_box_matches_chord_lengths():
    s = 32
    vol = torch.ones(1, s // 2, s, s)
    # θ = 0: projection along z through the full box thickness ½
    img0 = phantom._project_oblique(vol, torch.tensor([0.0]), s)
    centre = img0[0, 4:-4, 4:-4]
    assert torch.allclose(centre, torch.full_like(centre, 0.5), atol=1e-6)  # measured: exact
    # θ = 45°: the central ray crosses z ∈ [-¼, ¼] over a chord of length ½ / cos 45° = 0.707
    img = phantom._project_oblique(vol, torch.tensor([math.pi / 4]), s)
    mid = img[0, s // 2 - 1:s // 2 + 1, 4:-4]
    # measured error 0.0053 (bilinear sampling at the box faces; deterministic)
    assert torch.allclose(mid, torch.full_like(mid, 0.5 / math.cos(math.pi / 4)), atol=0.01)


def test_oblique_projection_puts_a_point_where_geometry_says():
    s, theta = 32, math.radians(45)
    vol = torch.zeros(1, s // 2, s, s)
    iz, iy, ix = 4, 22, 10  # voxel centre: x, y, z physical
    vol[0, iz, iy, ix] = 1.0
    y, z = (iy + 0.5) / s - 0.5, (iz + 0.5) / s - 0.25
    v = y * math.cos(theta) - z * math.sin(theta)
    img = phantom._project_oblique(vol, torch.tensor([theta]), s)[0]
    row, col = divmod(int(img.argmax()), s)
    assert col == ix
    assert abs((0.5 - (row + 0.5) / s) - v) <= 1.5 / s


def test_images_do_not_depend_on_the_thread_count_or_the_workers():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = phantom.generate(PhantomConfig(n=130, size=32))
        torch.set_num_threads(2)
        two = phantom.generate(PhantomConfig(n=130, size=32), workers=2)  # two chunks, two processes
        assert torch.get_num_threads() == 2  # restored after generation
    finally:
        torch.set_num_threads(threads)
    for k in ("cc", "mlo", "y", "lesion", "visible"):
        np.testing.assert_array_equal(one[k], two[k])


def test_occult_lesions_leave_that_view_untouched():
    """Projection is linear: a lesion hidden in a view changes nothing in it; a visible one changes it."""
    seen = phantom.generate(PhantomConfig(n=64, size=32, occult=0.0))
    hidden = phantom.generate(PhantomConfig(n=64, size=32, occult=1.0))
    has_lesion = seen["lesion"] > 0
    assert (seen["visible"] == 3).all() and (hidden["visible"] == 0).all()
    for view in ("cc", "mlo"):
        diff = np.abs(seen[view].astype(float) - hidden[view].astype(float)).max(axis=(1, 2))
        assert (diff[~has_lesion] == 0).all() and (diff[has_lesion] > 0.01).all()


def test_occlusion_is_independent_per_view():
    v = phantom.generate(PhantomConfig(n=2048, size=16, occult=0.25))["visible"]
    cc, mlo = (v & 1) > 0, (v & 2) > 0
    # binomial spread at n = 2048: sd 0.0096 of each rate; 4 sd
    assert abs(cc.mean() - 0.75) < 0.04 and abs(mlo.mean() - 0.75) < 0.04
    assert abs((cc & mlo).mean() - cc.mean() * mlo.mean()) < 0.04


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="occult"):
        PhantomConfig(occult=1.5)
