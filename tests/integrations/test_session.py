"""RecorderSession, the life cycle every trainer callback shares, driven directly (no trainer): attach on the
writer, the outcome agreed on every process, logging that never stops training, closing with the error, and a
second run of the same callback resuming the first."""
from __future__ import annotations

import pytest
import torch

import dynamics
from dynamics.integrations._common import RecorderSession
from tests.harness import fresh_model, make_batches


def _step(model, optimizer, batch):
    x_cc, x_mlo, y = batch[0]
    ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def _views(model):
    return {"cc": model.cc, "mlo": model.mlo}


def test_a_second_start_resumes_and_an_open_run_is_closed_with_an_error(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = RecorderSession(tmp_path / "run", {"condition": "c"}, "TestCallback")
    batches = make_batches(4)
    session.start(model, optimizer, _views(model), scaler=None, writes=True, agree=lambda m: m)
    for batch in batches[:2]:
        _step(model, optimizer, batch)
    # the trainer raised and never said so: the next start closes the run as ended by an error, then resumes it
    first = session.recorder
    session.start(model, optimizer, _views(model), scaler=None, writes=True, agree=lambda m: m)
    assert first.meta["status"] == "closed" and session.recorder is not first
    assert any("training began again" in e for e in first.meta["errors"])
    for batch in batches[2:]:
        _step(model, optimizer, batch)
    session.close()
    session.close()  # twice is safe
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and meta["resumed_at"] == [2] and meta["condition"] == "c"
    assert sorted(dynamics.load(tmp_path / "run")[1]["step"]) == [0, 1, 2, 3]


def test_a_bad_scalar_stops_logging_once_and_never_training(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = RecorderSession(tmp_path / "run", {}, "TestCallback")
    session.start(model, optimizer, _views(model), scaler=None, writes=True, agree=lambda m: m)
    _step(model, optimizer, make_batches(1)[0])
    session.log({"loss": 1.0})
    with pytest.warns(RuntimeWarning, match="TestCallback: scalars are no longer logged"):
        session.log({"step": 2.0})  # a reserved name
    session.log({"loss": 3.0})  # not logged any more, and no second warning
    session.close()
    assert dynamics.load(tmp_path / "run")[1]["loss"].tolist() == [1.0]


def test_the_writer_failing_raises_on_every_process(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = RecorderSession(tmp_path / "run", {}, "TestCallback")
    shared = []
    with pytest.raises(ValueError, match="'nothing.\*'"):
        writer.start(model, optimizer, {"cc": model.cc, "none": "nothing.*"}, scaler=None, writes=True,
                     agree=lambda m: shared.append(m) or m)
    other = RecorderSession(tmp_path / "run", {}, "TestCallback")
    with pytest.raises(RuntimeError, match="writing process could not attach the recorder: ValueError"):
        other.start(model, optimizer, None, scaler=None, writes=False, agree=lambda m: shared[0])
    assert not writer.open and not other.open


def test_unknown_options_fail_when_the_callback_is_made(tmp_path):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['evry'\]"):
        RecorderSession(tmp_path / "run", {"evry": 2}, "TestCallback")
