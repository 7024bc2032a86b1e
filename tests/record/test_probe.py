"""The probe: path-integrated lca on a fixed batch, its residuals, and that it never changes training."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

import dynamics

# per-tensor lca, float32 record vs float64 reference: measured max |error| 2.1e-7 × the largest |lca|; some
# tensors have lca ~1e-35 (gradients that vanish in exact arithmetic), hence the tolerance relative to the largest
RTOL_LCA, ATOL_LCA = 1e-4, 1e-6


class Net(nn.Module):
    """Two small views with BatchNorm and Dropout, so the probe must protect buffers and the RNG stream."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.cc = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(dropout))
        self.mlo = nn.Sequential(nn.Linear(5, 16), nn.Tanh())
        self.head = nn.Linear(32, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.cc(a), self.mlo(b)], 1)).squeeze(1)


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _data(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 5, generator=g), torch.randn(16, generator=g))
            for _ in range(steps)]


def _train(model, data, *, probe=None, tmp=None, lr=0.05, every=1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rec = None
    if tmp is not None:
        rec = dynamics.attach(model, opt, views={"cc": model.cc, "mlo": model.mlo}, out=tmp, probe=probe,
                              probe_every=2, every=every)
    for a, b, y in data:
        _mse(model(a, b), y).backward()
        opt.step()
        opt.zero_grad()
    if rec:
        rec.close()
    return model


def test_probe_never_changes_training(tmp_path):
    torch.manual_seed(0)
    model = Net(dropout=0.3)
    probed, plain = copy.deepcopy(model), copy.deepcopy(model)
    g = torch.Generator().manual_seed(9)
    probe = dynamics.ProbeBatch((torch.randn(32, 6, generator=g), torch.randn(32, 5, generator=g)),
                                torch.randn(32, generator=g), _mse)
    torch.manual_seed(1)
    _train(probed, _data(6), probe=probe, tmp=tmp_path / "probed", every=3)
    after_probed = torch.rand(3)
    torch.manual_seed(1)
    _train(plain, _data(6))
    after_plain = torch.rand(3)
    for (k, a), (_, b) in zip(probed.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), f"{k} changed by the probe"   # parameters and BatchNorm running stats
    assert torch.equal(after_probed, after_plain)                # the RNG stream continues unchanged
    _, per_step = dynamics.load(tmp_path / "probed")
    assert per_step.dropna(subset=["probe_change"])["step"].tolist() == [0, 2, 4]


def test_residuals_simpson_below_one_percent_and_sums_exact(tmp_path):
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(5)
    inputs = (torch.randn(64, 6, generator=g), torch.randn(64, 5, generator=g))
    targets = torch.randn(64, generator=g)
    probe = dynamics.ProbeBatch(inputs, targets, _mse)
    data = _data(5)

    # brute force, on an independent copy in float64: the probe loss at θ_t and θ_{t+1}, and the probe gradient
    # at θ_t, θ_½ = (θ_t + θ_{t+1})/2 and θ_{t+1}; per tensor, with Δθ = θ_{t+1} − θ_t:
    # first = g₀·Δθ, trapezoid = (g₀ + g₁)/2·Δθ, Simpson = (g₀ + 4g_½ + g₁)/6·Δθ
    reference = copy.deepcopy(model).double()
    names = [n for n, _ in reference.named_parameters()]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9)

    def probe_loss(theta=None):
        reference.train()
        x = tuple(t.double() for t in inputs)
        out = reference(*x) if theta is None else functional_call(reference, theta, x)
        return _mse(out, targets.double())

    def probe_grads(theta):
        leaves = {n: t.clone().requires_grad_() for n, t in theta.items()}
        return dict(zip(names, torch.autograd.grad(probe_loss(leaves), [leaves[n] for n in names])))

    expected, per_tensor = [], []
    for step, (a, b, y) in enumerate(data):
        l0 = probe_loss()
        g0 = torch.autograd.grad(l0, list(reference.parameters()))
        before = [p.detach().clone() for p in reference.parameters()]
        _mse(reference(a.double(), b.double()), y.double()).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        with torch.no_grad():
            l1 = probe_loss()
        first = sum(float((gi * (p.detach() - p0)).sum()) for gi, p, p0 in zip(g0, reference.parameters(), before))
        expected.append((float(l1 - l0.detach()), first))
        theta0 = dict(zip(names, before))
        theta1 = {n: p.detach().clone() for n, p in reference.named_parameters()}
        grads = [probe_grads(theta0), probe_grads({n: (theta0[n] + theta1[n]) / 2 for n in names}),
                 probe_grads(theta1)]
        for n in names:
            start, half, end = (gr[n] for gr in grads)
            delta = theta1[n] - theta0[n]
            per_tensor.append({"step": step, "param": n, "lca_first_ref": float((start * delta).sum()),
                               "lca_trapezoid_ref": float(((start + end) / 2 * delta).sum()),
                               "lca_simpson_ref": float(((start + 4 * half + end) / 6 * delta).sum())})

    _train(model, data, probe=probe, tmp=tmp_path / "run", lr=0.2)
    _, per_step = dynamics.load(tmp_path / "run")
    table = dynamics.load_probe(tmp_path / "run")
    probed = per_step.dropna(subset=["probe_change"]).set_index("step")
    assert probed.index.tolist() == [0, 2, 4]
    merged = pd.DataFrame(per_tensor).merge(table.astype({"param": str}), on=["step", "param"])
    assert len(merged) == len(table) == 3 * len(names)
    for rule in ("first", "trapezoid", "simpson"):  # per tensor and rule against the brute-force path
        column = f"lca_{rule}"
        np.testing.assert_allclose(merged[column], merged[f"{column}_ref"], rtol=RTOL_LCA,
                                   atol=ATOL_LCA * np.abs(merged[f"{column}_ref"]).max(), err_msg=column)
    for step in probed.index:
        row = probed.loc[step]
        change, first = expected[step]
        assert row["probe_change"] == pytest.approx(change, rel=5e-4)  # measured 5.7e-5 (float32 losses)
        sums = table[table["step"] == step][["lca_first", "lca_trapezoid", "lca_simpson"]].sum()
        assert sums["lca_first"] == pytest.approx(first, rel=1e-5)   # Σ over tensors = total first-order
        for rule in ("first", "trapezoid", "simpson"):                # residual = change − Σ lca, exactly
            assert row[f"probe_residual_{rule}"] == pytest.approx(row["probe_change"] - sums[f"lca_{rule}"],
                                                                 rel=1e-12, abs=1e-15)
        assert abs(row["probe_residual_simpson"]) < 0.01 * abs(row["probe_change"])
        assert abs(row["probe_residual_first"]) > abs(row["probe_residual_simpson"])
    assert set(table["view"]) == {"cc", "mlo", "shared"}


def test_probe_argument_errors(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="ProbeBatch"):
        dynamics.attach(model, opt, views={"cc": model.cc}, out=tmp_path / "a", probe=(1, 2))
    with pytest.raises(ValueError, match="probe_every"):
        dynamics.attach(model, opt, views={"cc": model.cc}, out=tmp_path / "b",
                        probe=dynamics.ProbeBatch(None, None, _mse), probe_every=0)


def test_bad_probe_fails_at_attach_and_leaves_no_trace(tmp_path):
    torch.manual_seed(0)
    model = Net(dropout=0.5)
    before = copy.deepcopy(model.state_dict())
    bad = dynamics.ProbeBatch((torch.randn(4, 7), torch.randn(4, 5)), torch.randn(4), _mse)  # 7 ≠ 6 features
    good = dynamics.ProbeBatch((torch.randn(4, 6), torch.randn(4, 5)), torch.randn(4), _mse)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="probe: loss_fn"):
        dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc},
                        out=tmp_path / "r", probe=bad)
    rec = dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc},
                          out=tmp_path / "s", probe=good)
    rec.close()
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_failure_mid_run_keeps_the_steps_before_it(tmp_path):
    calls = []

    def flaky(out, y):  # attach checks once; a probe step calls it three times; the 6th call fails
        calls.append(1)
        if len(calls) >= 6:
            raise RuntimeError("probe exploded")
        return _mse(out, y)

    torch.manual_seed(0)
    model = Net()
    probe = dynamics.ProbeBatch((torch.randn(8, 6), torch.randn(8, 5)), torch.randn(8), flaky)
    with pytest.warns(RuntimeWarning, match="probe exploded"):
        _train(model, _data(5), probe=probe, tmp=tmp_path / "run")   # probe_every=2: steps 0, 2, 4
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == [0, 1]                       # step 2 failed mid-way: no partial row
    assert np.isfinite(per_step.loc[0, "probe_change"])               # step 0's probe is kept
    assert "probe exploded" in dynamics.read_meta(tmp_path / "run")["errors"][0]
