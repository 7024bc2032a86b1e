"""Trainers' optimizer wrappers are unwrapped to the torch optimizer they hold (or refused, naming the fix), and
a failed attach leaves no run behind."""
from __future__ import annotations

import pytest
import torch

import dynamics
from tests.harness import Setup, assert_matches_reference, clone, fresh_model, make_batches, train


class Accelerated(torch.optim.Optimizer):
    """Like Accelerate's AcceleratedOptimizer: a torch Optimizer subclass that never runs Optimizer.__init__
    (so it has no step hooks of its own) and forwards to the optimizer at ``.optimizer``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure)


class Proxy:
    """Like Lightning's LightningOptimizer: not an Optimizer itself but an instance of a subclass of the wrapped
    optimizer's class made on the fly (for isinstance checks); keeps it at ``._optimizer`` and forwards every
    other attribute to it."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        self.__class__ = type("Proxy" + type(optimizer).__name__, (Proxy, type(optimizer)), {})

    def __getattr__(self, name):
        return getattr(self._optimizer, name)

    def step(self, closure=None):
        return self._optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("wrap, wrappers", [(Accelerated, 1), (Proxy, 1), (lambda opt: Proxy(Accelerated(opt)), 2)],
                         ids=["accelerated", "proxy", "proxy-of-accelerated"])
def test_wrapped_optimizers_record_the_numbers_of_the_one_they_hold(tmp_path, wrap, wrappers):
    model = fresh_model()
    reference_model = clone(model)
    batches = make_batches(4, micro=2)
    setup = Setup("wrapped-sgd-clip", lambda m: wrap(_sgd(m)), micro=2, clip=0.05)
    recorders = []

    def factory(m, opt, scaler):
        recorders.append(dynamics.attach(m, opt, views={"cc": m.cc, "mlo": m.mlo}, out=tmp_path / "r"))
        return recorders[-1]
    train(model, setup, batches, recorder_factory=factory)
    reference = train(reference_model, Setup("sgd-clip", _sgd, micro=2, clip=0.05), batches)
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert_matches_reference(per_param, reference, rtol=2e-5, atol=1e-12)
    assert per_step["clip_factor"].notna().all()
    assert type(recorders[0].optimizer) is torch.optim.SGD
    meta = dynamics.read_meta(tmp_path / "r")
    assert meta["optimizer"]["class"] == "torch.optim.sgd.SGD"
    assert len(meta["optimizer"]["wrappers"]) == wrappers


class NotInitialised(torch.optim.SGD):
    """A torch Optimizer subclass whose __init__ forgot Optimizer.__init__ and holds no optimizer."""

    def __init__(self) -> None:
        pass


@pytest.mark.parametrize("optimizer, message", [
    (object(), "must be a torch.optim.Optimizer or a wrapper holding one at .optimizer or ._optimizer"),
    (NotInitialised(), "Optimizer.__init__ did not run"),
], ids=["not-an-optimizer", "not-initialised"])
def test_what_cannot_be_unwrapped_is_refused_naming_the_fix(tmp_path, optimizer, message):
    model = fresh_model()
    with pytest.raises(TypeError, match=message) as caught:
        dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r")
    assert "pass attach() the torch optimizer" in str(caught.value)
    assert not (tmp_path / "r").exists()


def test_lbfgs_inside_a_wrapper_is_refused(tmp_path):
    model = fresh_model()
    with pytest.raises(NotImplementedError, match="LBFGS"):
        dynamics.attach(model, Accelerated(torch.optim.LBFGS(model.parameters())), views={"cc": model.cc},
                        out=tmp_path / "r")


class HooklessSGD(torch.optim.SGD):
    """Fails where a hook is registered, after the run directory was opened."""

    def register_step_post_hook(self, hook):
        raise AttributeError("no step hooks here")


@pytest.mark.parametrize("where", ["new", "existing-empty"])
def test_a_failed_attach_leaves_no_run_and_a_retry_works(tmp_path, where):
    out = tmp_path / "r"
    if where == "existing-empty":
        out.mkdir()
    model = fresh_model()
    with pytest.raises(AttributeError, match="no step hooks"):
        dynamics.attach(model, HooklessSGD(model.parameters(), lr=0.1), views={"cc": model.cc}, out=out)
    assert out.exists() == (where == "existing-empty")
    assert not out.exists() or not any(out.iterdir())
    assert not model.cc[0].weight._backward_hooks  # nothing left attached either
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=out):
        for [(x_cc, x_mlo, y)] in make_batches(2):
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert dynamics.load(out)[1]["step"].tolist() == [0, 1]


def test_a_failed_resume_puts_the_run_back(tmp_path):
    out = tmp_path / "r"
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=out):
        for [(x_cc, x_mlo, y)] in make_batches(2):
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    before = (out / "meta.json").read_text()
    with pytest.raises(AttributeError, match="no step hooks"):
        dynamics.attach(model, HooklessSGD(model.parameters(), lr=0.1), views={"cc": model.cc}, out=out,
                        resume=True)
    assert (out / "meta.json").read_text() == before
    assert dynamics.load(out)[1]["step"].tolist() == [0, 1]
