"""The per-tensor reductions against float64 brute force: the loop (CPU) and the batched form (GPU) alike."""
import pytest
import torch

from dynamics.record import kernels as quantities
from tests.harness import DEVICES, device_or_skip

SHAPES = [(3, 4), (7,), (0, 5), (2, 3, 2), (1,)]


def _tensors(device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in SHAPES]


def _brute(a, b):
    return torch.tensor([0.0 if x is None else float((x.double() * y.double()).sum()) for x, y in zip(a, b)],
                        dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["loop", "batched"])
def test_dots_match_brute_force_with_missing_and_low_precision(device, how):
    device = device_or_skip(device)
    b = _tensors(device, seed=1)
    dots = quantities.dots if how == "loop" else quantities.BatchedDots(b, torch.float32)
    for a in (_tensors(device), _tensors(device, torch.bfloat16, seed=2)):
        with_missing = [None if i == 1 else x for i, x in enumerate(a)]
        for left in (a, with_missing, a):  # the batched buffer is reused: a later call must not see an earlier one
            got = dots(left, b)
            assert got.shape == (len(SHAPES),) and got.device.type == device.type
            torch.testing.assert_close(got.double().cpu(), _brute(left, b), rtol=1e-6, atol=1e-6)


def test_sq_norms_match_brute_force():
    a = _tensors("cpu")
    torch.testing.assert_close(quantities.sq_norms(a).double(), _brute(a, a), rtol=1e-6, atol=1e-7)


def test_batched_dots_refuses_another_list():
    dots = quantities.BatchedDots(_tensors("cpu"), torch.float32)
    with pytest.raises(ValueError, match="made for 5 tensors, got 4"):
        dots(_tensors("cpu")[:4], _tensors("cpu")[:4])
    with pytest.raises(ValueError, match="equal length"):
        dots(_tensors("cpu"), _tensors("cpu")[:4])


def _params(device, dtypes, seed=0):
    """Tensors on both sides of the cache-blocking threshold, of the given dtypes in turn."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 3, 3, 3), (quantities.CACHE_BLOCK_MIN + 5,), (7,), (0, 3), (300, 200), (1,)]
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtypes[i % len(dtypes)])
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16, torch.float32), (torch.float64,),
                                    (torch.float32, torch.float64)], ids=["f32", "bf16+f32", "f64", "f32+f64"])
def test_saved_update_matches_brute_force(device, dtypes):
    """θ_t saved exactly, ‖θ_t‖², then −Δθ in the copy, ‖Δθ‖² and g·Δθ (0 without a gradient), against float64
    sums, for tensors measured on their own (large) and grouped (small), over two steps (buffers reused)."""
    device = device_or_skip(device)
    before = _params(device, dtypes)
    dtype = quantities.reduce_dtype(before)
    kernels = quantities.SavedUpdate(before, dtype)
    assert kernels._own if device.type == "cpu" and dtypes == (torch.float32,) else True  # both paths are run
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for seed in (1, 2):
        grads = [None if i == 2 else g for i, g in enumerate(_params(device, dtypes, seed=seed + 10))]
        norm_grads = [torch.zeros(1, device=device) if g is None else g for g in grads]
        param_sq, grad_sq = kernels.save(before, also_norm=norm_grads)
        after = [(p.double() - 0.01 * q.double()).to(p.dtype) for p, q in zip(before, _params(device, dtypes, seed))]
        assert all(torch.equal(s, p.to(s.dtype)) for s, p in zip(kernels.saved, before))
        update_sq, lca = kernels.form_update(after, grads)
        # −Δθ rounded once, in θ_t's saved precision (exact for float16/bfloat16 tensors, kept in float32)
        assert all(torch.equal(s, b.to(s.dtype) - a.to(s.dtype)) for s, a, b in zip(kernels.saved, after, before))
        delta = [-s.double() for s in kernels.saved]
        for got, want in [(param_sq, _brute(before, before)), (grad_sq, _brute(norm_grads, norm_grads)),
                          (update_sq, _brute(delta, delta)), (lca, _brute(grads, delta))]:
            assert got.shape == (len(before),) and got.dtype == dtype and got.device.type == device.type
            torch.testing.assert_close(got.double().cpu(), want, **tol)
        before = after


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float64,)], ids=["f32", "bf16", "f64"])
def test_part_sums_match_brute_force(device, views, dtypes):
    """‖g_v‖², g_v·Δθ and g_v·(g − g_v) per view and tensor (large ones alone, small ones grouped) against
    float64 sums; without −Δθ (a skipped step) g_v·Δθ is NaN and the rest unchanged."""
    device = device_or_skip(device)
    like = _params(device, dtypes)
    dtype = quantities.reduce_dtype(like)
    sums = quantities.PartSums(like, views, dtype)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for seed in (1, 2):
        parts = [_params(device, dtypes, seed=10 * seed + v) for v in range(views)]
        minus_delta = [t.to(dtype) for t in _params(device, dtypes, seed=seed)]
        total = [sum(p[i].double() for p in parts) for i in range(len(like))]
        want_sq = torch.stack([_brute(p, p) for p in parts])
        want_lca = torch.stack([-_brute(p, minus_delta) for p in parts])
        want_cross = torch.stack([_brute(p, [t - x.double() for t, x in zip(total, p)]) for p in parts])
        for md in (minus_delta, None):
            got = sums(parts, md)
            assert got.shape == (views, 3, len(like)) and got.dtype == dtype and got.device.type == device.type
            got = got.double().cpu()
            torch.testing.assert_close(got[:, 0], want_sq, **tol)
            torch.testing.assert_close(got[:, 2], want_cross, **tol)
            if md is None:
                assert torch.isnan(got[:, 1]).all()
            else:
                torch.testing.assert_close(got[:, 1], want_lca, **tol)
