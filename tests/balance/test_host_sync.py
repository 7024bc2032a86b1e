"""No device-to-host transfer from the interventions, except re-balancing's one read on its check steps.

Mirrors tests/record/test_host_sync.py and uses its counter of every way a tensor's value reaches the host.
"""
import pytest
import torch
from torch import nn

import dynamics
from dynamics.balance import modality_dropout, ogm_ge, rebalance
from tests.balance.common import TinyTwoView, batch
from tests.record.test_host_sync import CONVERSIONS, _reset, conversion_counter  # noqa: F401 - the fixture

CRITERION = nn.CrossEntropyLoss()


def _loop(model, opt, steps, g, counts=None, per_step=None):
    for _ in range(steps):
        for _ in range(2):  # accumulation
            xa, xb, y = batch(g)
            (CRITERION(model(xa, xb), y) / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        if per_step is not None:
            per_step.append(sum(counts.values()))


@pytest.mark.parametrize("name", ["dropout", "ogm-ge", "rebalance-random", "all-three"])
def test_no_host_transfers(tmp_path, conversion_counter, name):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, opt, views={"a": model.a, "b": model.b}, out=tmp_path / "r", flush_every=100)
    branches = {"a": model.a, "b": model.b}
    handles = []
    if name in ("dropout", "all-three"):
        handles.append(modality_dropout(model.head, {"a": 4, "b": 2}, p=0.5))
    if name in ("ogm-ge", "all-three"):
        handles.append(ogm_ge(model.head, opt, branches, loss=CRITERION, alpha=1.0))
    if name == "rebalance-random":
        handles.append(rebalance(model.head, opt, branches, mode="random", steps=2))
    if name == "all-three":
        handles.append(rebalance(model.head, opt, branches, threshold=0.0, every=100, warmup=50))
    _reset(conversion_counter)
    _loop(model, opt, 8, torch.Generator().manual_seed(1))
    assert conversion_counter == {n: 0 for n in CONVERSIONS}
    for handle in handles:
        handle.remove()
    rec.close()  # the flush reads the logged device tensors: the counter sees it
    assert sum(conversion_counter.values()) > 0
    _, per_step = dynamics.load(tmp_path / "r")
    assert len(per_step) == 8


def test_rebalancing_reads_once_on_each_check_step_only(tmp_path, conversion_counter):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, opt, views={"a": model.a, "b": model.b}, out=tmp_path / "r", flush_every=100)
    handle = rebalance(model.head, opt, {"a": model.a, "b": model.b}, threshold=0.0, every=3, steps=2, warmup=1)
    _reset(conversion_counter)
    cumulative = []
    _loop(model, opt, 12, torch.Generator().manual_seed(1), conversion_counter, cumulative)
    reads = {n: v for n, v in conversion_counter.items() if v}
    handle.remove()
    rec.close()
    _, per_step = dynamics.load(tmp_path / "r")
    checked = per_step.dropna(subset=["rebalance_speed_a"])["step"].tolist()
    # check steps: from warm-up (1) every 3rd step, unless the step is inside a window (threshold 0: each check
    # starts a window of 2 steps, so every check from step 1 on finds the previous window over)
    assert checked == [1, 4, 7, 10] and handle.reads == 4
    assert reads == {"tolist": 4}
    increments = [b - a for a, b in zip([0] + cumulative, cumulative)]
    assert [t for t, inc in enumerate(increments) if inc] == checked and set(increments) <= {0, 1}
