"""OGM-GE's coefficients and modulated gradients against autograd on a tiny two-view model.

The reference computes each view's unimodal logits, scores, ratio and coefficient by hand in float64 from the
branch outputs and the head's weights, and the plain gradient with ``torch.autograd.grad`` on an untouched
copy of the model; the modulated gradient must be k_v times it.
"""
import copy
import math

import pytest
import torch
from torch import nn

import dynamics
from dynamics.balance import coefficients, ogm_ge
from tests.balance.common import TinyTwoView, batch


def _k(rho: float, alpha: float, rule: str) -> float:
    if rule == "shifted":
        return 1 - math.tanh(alpha * max(rho - 1, 0.0))
    return 1 - math.tanh(alpha * rho) if rho > 1 else 1.0


def _hand_coefficients(model, xa, xb, y, alpha, rule="shifted", fusion=None):
    """k per view by hand: unimodal logits from the head's column slices (or f(h_v, 0) − f(0)/2), scores, ρ."""
    with torch.no_grad():
        h = [model.a(xa).double(), model.b(xb).double()]
        if fusion is None:
            w, b = model.head.weight.double(), model.head.bias.double()
            u = [h[0] @ w[:, :h[0].shape[1]].T + b / 2, h[1] @ w[:, h[0].shape[1]:].T + b / 2]
        else:
            f = copy.deepcopy(fusion).double().eval()  # documented: evaluated in eval mode
            z = [torch.zeros_like(t) for t in h]
            base = f(torch.cat(z, 1))
            u = [f(torch.cat([h[0], z[1]], 1)) - base / 2, f(torch.cat([z[0], h[1]], 1)) - base / 2]
    if u[0].shape[1] == 1:
        yy = y.double().unsqueeze(1)
        s = [float((yy * torch.sigmoid(t) + (1 - yy) * (1 - torch.sigmoid(t))).mean()) for t in u]
    else:
        s = [float(torch.softmax(t, 1)[torch.arange(len(y)), y].mean()) for t in u]
    return [_k(s[0] / s[1], alpha, rule), _k(s[1] / s[0], alpha, rule)], s


def _plain_grads(model, xa, xb, y, loss_fn):
    loss = loss_fn(model(xa, xb), y)
    return torch.autograd.grad(loss, list(model.parameters()))


def _split(model):
    return {"a": model.a, "b": model.b}


def test_coefficients_by_hand():
    s = torch.tensor([0.6, 0.3], dtype=torch.float64)
    k, rho = coefficients(s, 0.5)
    assert rho.tolist() == pytest.approx([2.0, 0.5])
    assert k.tolist() == pytest.approx([1 - math.tanh(0.5), 1.0])
    k, _ = coefficients(s, 0.5, "authors")
    assert k.tolist() == pytest.approx([1 - math.tanh(1.0), 1.0])
    k, rho = coefficients(torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64), 1.0)  # ρ against the others' mean
    assert rho.tolist() == pytest.approx([0.4, 1.0, 2.0]) and k.tolist() == pytest.approx([1, 1, 1 - math.tanh(1)])


@pytest.mark.parametrize("rule", ["shifted", "authors"])
def test_modulated_gradients_against_autograd(rule):
    torch.manual_seed(0)
    model = TinyTwoView()
    plain = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    handle = ogm_ge(model.head, opt, _split(model), loss=criterion, alpha=2.0, noise=False, rule=rule)
    g = torch.Generator().manual_seed(2)
    modulated = 0
    for _ in range(4):
        xa, xb, y = batch(g)
        k, _ = _hand_coefficients(model, xa, xb, y, 2.0, rule)
        ref = _plain_grads(plain, xa, xb, y, criterion)
        criterion(model(xa, xb), y).backward()
        torch.testing.assert_close(handle.coef.double(), torch.tensor(k, dtype=torch.float64), rtol=1e-5, atol=0)
        for (name, p), r in zip(model.named_parameters(), ref):
            factor = k[0] if name.startswith("a.") else k[1] if name.startswith("b.") else 1.0
            torch.testing.assert_close(p.grad, r * factor, rtol=1e-5, atol=1e-7)
        modulated += min(k) < 1
        opt.step()
        opt.zero_grad()
        plain.load_state_dict(model.state_dict())
    assert modulated >= 3
    handle.remove()


def test_binary_head_functional_loss_and_general_fusion():
    """One logit, targets given with handle.targets(y), a non-linear head: u_v = f(h_v ⊕ 0) − f(0)/2."""

    class Deep(TinyTwoView):
        def __init__(self):
            super().__init__(classes=1)
            self.head = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 1))

    torch.manual_seed(0)
    model = Deep()
    plain = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = lambda out, y: nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float())  # noqa: E731
    handle = ogm_ge(model.head, opt, _split(model), alpha=3.0, noise=False)
    g = torch.Generator().manual_seed(4)
    xa, xb, y = batch(g, n=32, classes=2)
    k, s = _hand_coefficients(model, xa, xb, y, 3.0, fusion=model.head)
    torch.manual_seed(9)
    ref = _plain_grads(plain, xa, xb, y, loss_fn)
    torch.manual_seed(9)  # the head's own dropout draws the same mask: the extra evaluations draw nothing
    out = model(xa, xb)
    handle.targets(y)
    loss_fn(out, y).backward()
    assert min(k) < 0.99
    torch.testing.assert_close(handle.coef.double(), torch.tensor(k, dtype=torch.float64), rtol=1e-5, atol=0)
    for (name, p), r in zip(model.named_parameters(), ref):
        factor = k[0] if name.startswith("a.") else k[1] if name.startswith("b.") else 1.0
        torch.testing.assert_close(p.grad, r * factor, rtol=1e-5, atol=1e-7)
    assert model.head.training  # restored after the eval-mode evaluations
    handle.remove()


def test_missing_targets_is_a_clear_error():
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ogm_ge(model.head, opt, _split(model)):
        xa, xb, y = batch(torch.Generator().manual_seed(0))
        with pytest.raises(RuntimeError, match="targets"):
            nn.functional.cross_entropy(model(xa, xb), y).backward()


def test_noise_follows_the_gradient_spread_from_its_own_stream():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(5, 300), nn.Linear(3, 300), nn.Linear(600, 3)

        def forward(self, xa, xb):
            return self.head(torch.cat([self.a(xa), self.b(xb)], 1))

    def run(seed):
        torch.manual_seed(0)
        model = Wide()
        plain = copy.deepcopy(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        criterion = nn.CrossEntropyLoss()
        xa, xb, y = batch(torch.Generator().manual_seed(1))
        with ogm_ge(model.head, opt, _split(model), loss=criterion, alpha=1.0, seed=seed) as handle:
            ref = _plain_grads(plain, xa, xb, y, criterion)
            state = torch.random.get_rng_state()
            criterion(model(xa, xb), y).backward()
            assert torch.equal(state, torch.random.get_rng_state())  # the global stream is not used
            k = handle.coef.tolist()
        return model, ref, k

    model, ref, k = run(seed=3)
    for (name, p), r in zip(model.named_parameters(), ref):
        if name.startswith("head"):
            assert torch.equal(p.grad, r)
            continue
        noise = p.grad - r * k[0 if name.startswith("a") else 1]
        spread = r.std().item() + 1e-8
        assert noise.mean().item() == pytest.approx(0.0, abs=4 * spread / math.sqrt(r.numel()))
        assert noise.std().item() == pytest.approx(spread, rel=0.1)
    again, _, _ = run(seed=3)
    other, _, _ = run(seed=4)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), again.parameters()))
    assert not torch.equal(model.a.weight.grad, other.a.weight.grad)


def test_accumulation_start_stop_and_select():
    """Two micro-batches per step, each with its own k; only weights selected; active in step 1 only."""
    torch.manual_seed(0)
    model = TinyTwoView()
    plain = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    handle = ogm_ge(model.head, opt, _split(model), loss=criterion, alpha=2.0, noise=False, start=1, stop=2,
                    select=lambda name, p: p.dim() == 2)
    g = torch.Generator().manual_seed(5)
    for step in range(3):
        expected = [torch.zeros_like(p) for p in model.parameters()]
        for _ in range(2):
            xa, xb, y = batch(g)
            k, _ = _hand_coefficients(model, xa, xb, y, 2.0) if step == 1 else ([1.0, 1.0], None)
            for e, (name, p), r in zip(expected, model.named_parameters(), _plain_grads(plain, xa, xb, y, criterion)):
                weight = name.endswith("weight") and not name.startswith("head")
                e += r * (k[0 if name.startswith("a") else 1] if weight else 1.0) / 2
            (criterion(model(xa, xb), y) / 2).backward()
        for e, p in zip(expected, model.parameters()):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
        opt.step()
        opt.zero_grad()
        plain.load_state_dict(model.state_dict())
    handle.remove()


def test_recorder_measures_the_modulated_gradient_and_logs_k(tmp_path):
    """With clipping after the modulation: grad_sq = ‖k g‖², the clip factor of the modulated gradient."""
    torch.manual_seed(0)
    model = TinyTwoView()
    plain = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    rec = dynamics.attach(model, opt, views=_split(model), out=tmp_path / "r")
    handle = ogm_ge(model.head, opt, _split(model), loss=criterion, alpha=2.0, noise=False)
    g = torch.Generator().manual_seed(6)
    expect_sq, expect_clip, expect_k = {}, [], []
    for step in range(3):
        xa, xb, y = batch(g)
        k, _ = _hand_coefficients(model, xa, xb, y, 2.0)
        ref = _plain_grads(plain, xa, xb, y, criterion)
        mod = [r.double() * (k[0] if n.startswith("a") else k[1] if n.startswith("b") else 1.0)
               for (n, _), r in zip(model.named_parameters(), ref)]
        total = math.sqrt(sum(float((m ** 2).sum()) for m in mod))
        expect_clip.append(min(1.0, 0.05 / (total + 1e-6)))
        expect_sq.update({(step, n): float((m ** 2).sum()) for (n, _), m in zip(model.named_parameters(), mod)})
        expect_k.append(k)
        criterion(model(xa, xb), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        opt.zero_grad()
        plain.load_state_dict(model.state_dict())
    handle.remove()
    rec.close()
    per_param, per_step = dynamics.load(tmp_path / "r")
    got = per_param.set_index(["step", "param"])["grad_sq"]
    for key, value in expect_sq.items():
        assert got.loc[key] == pytest.approx(value, rel=1e-5)
    assert per_step["clip_factor"].tolist() == pytest.approx(expect_clip, rel=1e-5)
    assert per_step[["ogm_coef_a", "ogm_coef_b"]].values.ravel().tolist() == pytest.approx(
        [k for ks in expect_k for k in ks], rel=1e-5)


def test_passes_inside_the_optimizer_step_are_not_modulated():
    """What an optimizer hook computes (the recorder's probe does so) sees the plain gradient."""
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    criterion = nn.CrossEntropyLoss()
    handle = ogm_ge(model.head, opt, _split(model), loss=criterion, alpha=5.0)
    xa, xb, y = batch(torch.Generator().manual_seed(7))
    inside = {}
    opt.register_step_pre_hook(lambda o, a, kw: inside.update(g=torch.autograd.grad(
        criterion(model(xa, xb), y), list(model.parameters()))))
    criterion(model(xa, xb), y).backward()
    opt.step()
    handle.remove()
    for r, q in zip(_plain_grads(model, xa, xb, y, criterion), inside["g"]):
        assert torch.equal(r, q)
