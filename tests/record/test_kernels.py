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
