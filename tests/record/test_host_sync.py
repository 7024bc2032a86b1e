"""No device-to-host transfer in the training hot path: only flushes read the device buffers."""
import math
import sys
from pathlib import Path

import pytest
import torch

import dynamics
from tests.harness import Setup, SharedColumn, fresh_model, make_batches

# every way a tensor's value reaches the host: explicit copies, and the Python conversions (float(t), int(t),
# bool(t) / `if t:`, t.__index__ as in range(t) or list[t]) and nonzero(), whose output size needs the values
CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "nonzero")
PACKAGE = str(Path(dynamics.__file__).parent)


def _called_from_dynamics() -> bool:
    """True when any caller on the stack is dynamics code (the optimizer's own .item() calls don't count)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def conversion_counter(monkeypatch):
    counts = {name: 0 for name in CONVERSIONS}
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            counts[_name] += _called_from_dynamics()
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


def _reset(counts: dict) -> None:
    """Start counting from here: attach() may read the device once (the probe's check calls bool())."""
    for name in counts:
        counts[name] = 0


def test_counter_sees_python_conversions(conversion_counter):
    """float(t), int(t), bool(t), t.__index__ and t.nonzero() go through the patched methods."""
    t = torch.ones(())
    float(t), int(t), bool(t), [0, 1][t.long()], t.nonzero()
    assert conversion_counter == {name: 0 for name in CONVERSIONS}  # test code is not dynamics code
    exec(compile("float(t), int(t), bool(t), [0, 1][t.long()], t.nonzero()", PACKAGE + "/fake.py", "exec"))
    assert {name: conversion_counter[name] for name in ("__float__", "__int__", "__bool__", "__index__",
                                                        "nonzero")} == dict.fromkeys(
        ("__float__", "__int__", "__bool__", "__index__", "nonzero"), 1)


@pytest.mark.parametrize("setup", [
    Setup("adam-accumulate-clip", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), micro=2, clip=0.1),
    Setup("sgd-every-step", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)),
], ids=lambda s: s.name)
def test_no_host_transfers_between_flushes(tmp_path, conversion_counter, setup):
    model = fresh_model()
    optimizer = setup.make_optimizer(model)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r",
                          flush_every=100)
    _reset(conversion_counter)
    for micro in make_batches(8, setup.micro):
        for x_cc, x_mlo, y in micro:
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            loss.backward()
            rec.log(loss=loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip or math.inf)
        optimizer.step()
        optimizer.zero_grad()
    assert conversion_counter == {name: 0 for name in CONVERSIONS}
    rec.close()  # the flush reads the device buffer: the counter must see it (it is able to fail)
    assert sum(conversion_counter.values()) > 0
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert len(per_step) == 8 and per_step["loss"].notna().all()


@pytest.mark.parametrize("use_probe", [False, True])
def test_no_host_transfers_with_attribution_and_probe(tmp_path, conversion_counter, use_probe):
    torch.manual_seed(0)
    model = SharedColumn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    probe = dynamics.ProbeBatch((torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)),
                                torch.randn(8, generator=g), lambda out, y: ((out - y) ** 2).mean())
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=tmp_path / "r", flush_every=100, probe=probe if use_probe else None, probe_every=2)
    _reset(conversion_counter)
    for _ in range(6):
        a, b, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
        ((model(a, b) - y) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()
    assert conversion_counter == {name: 0 for name in CONVERSIONS}
    rec.close()
    assert sum(conversion_counter.values()) > 0
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_param["attributed"].any() and len(per_step) == 6
    assert per_step.get("probe_change", per_step["step"] * float("nan")).notna().sum() == (3 if use_probe else 0)

