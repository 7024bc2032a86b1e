"""Every intervention removes every hook it made; training after removal is bit-identical to never attached."""
import copy
import gc

import pytest
import torch
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

import dynamics
from dynamics.balance import modality_dropout, ogm_ge, rebalance
from tests.balance.common import TinyTwoView, batch, hook_count

CRITERION = nn.CrossEntropyLoss()
MAKERS = {
    "dropout": lambda m, o: modality_dropout(m.head, {"a": 4, "b": 2}, p=0.5),
    "rebalance": lambda m, o: rebalance(m.head, o, {"a": m.a, "b": m.b}, threshold=0.0, steps=2),
    "rebalance-random": lambda m, o: rebalance(m.head, o, {"a": m.a, "b": m.b}, mode="random", seed=1),
    "ogm-ge": lambda m, o: ogm_ge(m.head, o, {"a": m.a, "b": m.b}, loss=CRITERION, alpha=1.0),
}


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyTwoView()
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _train(model, opt, steps: int, g: torch.Generator) -> None:
    for _ in range(steps):
        xa, xb, y = batch(g)
        CRITERION(nn.functional.dropout(model(xa, xb), 0.2), y).backward()  # global random stream in use
        opt.step()
        opt.zero_grad()


def _global_hooks() -> int:
    return len(_global_optimizer_pre_hooks) + len(_global_optimizer_post_hooks)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_attached_then_removed_is_never_attached(name):
    gc.collect()  # an earlier test's unreachable dropout would hold the global step hooks until collected
    model, opt = _fresh()
    before, global_before = hook_count(model, opt), _global_hooks()
    with MAKERS[name](model, opt) as handle:
        assert hook_count(model, opt) > before and _global_hooks() == global_before + 2
    assert handle.removed and hook_count(model, opt) == before and _global_hooks() == global_before
    handle.remove()  # twice is fine
    torch.manual_seed(1)
    _train(model, opt, 6, torch.Generator().manual_seed(2))
    after = torch.random.get_rng_state()
    plain, plain_opt = _fresh()
    torch.manual_seed(1)
    _train(plain, plain_opt, 6, torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters()))
    assert torch.equal(after, torch.random.get_rng_state())


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_removed_mid_training_continues_as_the_plain_loop(name):
    model, opt = _fresh()
    g = torch.Generator().manual_seed(3)
    handle = MAKERS[name](model, opt)
    _train(model, opt, 6, g)
    handle.remove()
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    g_twin = torch.Generator().set_state(g.get_state())
    rng = torch.random.get_rng_state()
    _train(model, opt, 5, g)
    torch.random.set_rng_state(rng)
    _train(twin, twin_opt, 5, g_twin)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_the_interventions_did_change_training():
    """The identity tests above could pass with interventions that do nothing: they do something."""
    for name, make in MAKERS.items():
        model, opt = _fresh()
        plain, plain_opt = _fresh()
        with make(model, opt):
            torch.manual_seed(1)
            _train(model, opt, 6, torch.Generator().manual_seed(2))
        torch.manual_seed(1)
        _train(plain, plain_opt, 6, torch.Generator().manual_seed(2))
        assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters())), name


def test_all_three_compose_with_the_recorder_accumulation_and_clipping(tmp_path):
    """Dropout, re-balancing and OGM-GE on one fusion module, two micro-batches per step, clipping: the recorder
    still records the gradient the optimizer uses after the backward passes, and each intervention's columns
    are in the run at every step."""
    model, opt = _fresh()
    rec = dynamics.attach(model, opt, views={"a": model.a, "b": model.b}, out=tmp_path / "r")
    handles = [MAKERS["dropout"](model, opt), MAKERS["rebalance"](model, opt), MAKERS["ogm-ge"](model, opt)]
    g, grads = torch.Generator().manual_seed(4), []
    for _ in range(6):
        for _ in range(2):
            xa, xb, y = batch(g)
            (CRITERION(model(xa, xb), y) / 2).backward()
        grads.append({n: float((p.grad.double() ** 2).sum()) for n, p in model.named_parameters()})
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad()
    for handle in handles:
        handle.remove()
    rec.close()
    per_param, per_step = dynamics.load(tmp_path / "r")
    got = per_param.set_index(["step", "param"])["grad_sq"]
    for step, sq in enumerate(grads):
        for name, value in sq.items():
            assert got.loc[(step, name)] == pytest.approx(value, rel=1e-6)
    assert per_step["clip_factor"].lt(1).all()
    for column in ("present_a", "present_b", "rebalanced_a", "rebalanced_b", "ogm_coef_a", "ogm_coef_b"):
        assert per_step[column].notna().all(), column
    assert handles[1].schedule, "threshold 0: some steps were re-balanced"
