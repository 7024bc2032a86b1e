"""torch.compile: a compiled model and a compiled training step record the same numbers as eager, and
attaching dynamics adds no graph break and no graph.

The recorder's hooks sit on the parameters and the optimizer, outside the compiled graph. References: a
brute-force computation made in the same loop (compiled model), the harness's float64 brute force of the
eager loop, and a dynamics recording of that eager loop (same seed and data). Compiled kernels round
differently from eager ones, so compiled runs are compared with rtol 5e-5 (largest difference measured:
8e-6, compiled optimizer step).

Graph breaks are counted with ``torch._dynamo.utils.counters`` for each way of compiling, once with dynamics
attached and once without.
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import dynamics
from tests.harness import Setup, fresh_model, make_batches, train

STEPS = 4
COLUMNS = ["grad_sq", "param_sq", "update_sq", "lca"]
# cc.0 is a Linear followed by BatchNorm: its bias has no gradient in exact arithmetic, so ‖g‖² there is
# rounding noise (~1e-15); every other value is above 1e-5
ATOL = 1e-10
SGD = Setup("sgd-momentum", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loss(model, x_cc, x_mlo, y):
    return ((model(x_cc, x_mlo) - y) ** 2).mean()


def _training_step(how: str, model, optimizer):
    """One optimizer step of the plain loop, with the part ``how`` names compiled."""
    if how == "eager":
        def step(x_cc, x_mlo, y):
            _loss(model, x_cc, x_mlo, y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return step
    if how == "model":
        compiled = torch.compile(model)

        def step(x_cc, x_mlo, y):
            _loss(compiled, x_cc, x_mlo, y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return step
    if how in ("forward_backward", "traced_backward"):
        @torch.compile
        def train_step(x_cc, x_mlo, y):
            loss = _loss(model, x_cc, x_mlo, y)
            loss.backward()
            return loss.detach()

        def step(x_cc, x_mlo, y):  # the documented pattern: the optimizer steps eagerly
            train_step(x_cc, x_mlo, y)
            optimizer.step()
            optimizer.zero_grad()
        return step
    if how == "with_optimizer":
        @torch.compile
        def train_step(x_cc, x_mlo, y):
            loss = _loss(model, x_cc, x_mlo, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.detach()
        return train_step
    raise ValueError(how)


def _run(how: str, out=None) -> dict:
    """Train a fresh model for STEPS steps (recording into ``out`` if given) from a clean dynamo state;
    returns the graph breaks (reason → count), the number of graphs and the recording."""
    torch._dynamo.reset()
    counters.clear()
    model = fresh_model()
    optimizer = SGD.make_optimizer(model)
    recorder = (dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out) if out
                else contextlib.nullcontext())
    # traced_backward: dynamo traces loss.backward() into the graph instead of breaking there
    config = torch._dynamo.config.patch(trace_autograd_ops=how == "traced_backward")
    with recorder, config:
        step = _training_step(how, model, optimizer)
        for [(x_cc, x_mlo, y)] in make_batches(STEPS):
            step(x_cc, x_mlo, y)
    result = {"breaks": Counter({reason.split("\n")[0]: n for reason, n in counters["graph_break"].items()}),
              "graphs": counters["stats"]["unique_graphs"]}
    if out:
        result["per_param"], result["per_step"] = dynamics.load(out)
        result["meta"] = json.loads((out / "meta.json").read_text())
    return result


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The dynamics recording of each way of compiling, made once per module."""
    runs: dict[str, dict] = {}

    def get(how: str) -> dict:
        if how not in runs:
            runs[how] = _run(how, tmp_path_factory.mktemp(how) / "run")
        return runs[how]
    return get


def _table(per_param: pd.DataFrame) -> pd.DataFrame:
    return per_param.astype({"param": str}).set_index(["step", "param"])[COLUMNS].sort_index()


def _assert_close(actual: pd.DataFrame, expected: pd.DataFrame, rtol: float) -> None:
    assert list(actual.index) == list(expected.index)
    for column in COLUMNS:
        np.testing.assert_allclose(actual[column], expected[column], rtol=rtol, atol=ATOL, err_msg=column)


def test_compiled_model_matches_brute_force(tmp_path):
    model = fresh_model()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    expected = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(3)):
            ((compiled(x_cc, x_mlo) - y) ** 2).mean().backward()
            g = [p.grad.double().clone() for p in model.parameters()]
            before = [p.detach().double().clone() for p in model.parameters()]
            optimizer.step()
            optimizer.zero_grad()
            for name, gi, p, b in zip(names, g, model.parameters(), before):
                expected.append({"step": step, "param": name, "grad_sq_ref": float((gi ** 2).sum()),
                                 "lca_ref": float((gi * (p.detach().double() - b)).sum())})
    per_param, _ = dynamics.load(tmp_path / "r")
    merged = pd.DataFrame(expected).merge(per_param.astype({"param": str}), on=["step", "param"])
    assert len(merged) == len(expected) == len(per_param)
    np.testing.assert_allclose(merged["grad_sq"], merged["grad_sq_ref"], rtol=2e-5)
    np.testing.assert_allclose(merged["lca"], merged["lca_ref"], rtol=2e-5, atol=1e-12)


def test_eager_recording_matches_brute_force(recorded):
    """The eager recording the compiled ones are compared with is itself right."""
    brute = train(fresh_model(), SGD, make_batches(STEPS))
    _assert_close(_table(recorded("eager")["per_param"]), _table(brute), rtol=2e-5)


@pytest.mark.parametrize("how", ["model", "forward_backward", "with_optimizer", "traced_backward"])
def test_compiled_records_the_eager_numbers(recorded, how):
    run, eager = recorded(how), recorded("eager")
    assert not run["meta"].get("errors"), run["meta"]["errors"]
    assert not run["per_step"]["skipped"].any()
    _assert_close(_table(run["per_param"]), _table(eager["per_param"]), rtol=5e-5)
    _assert_close(_table(run["per_param"]), _table(train(fresh_model(), SGD, make_batches(STEPS))), rtol=5e-5)
    notes = run["meta"].get("notes", {})
    if how == "traced_backward":
        # torch 2.13 runs no tensor hook in a backward pass dynamo traced into the graph: the recorder sees no
        # backward pass, takes the gradient at the optimizer step (right here: no clipping or scaling), says so
        assert list(notes) == ["gradient taken at the optimizer step (no backward pass seen)"]
    else:
        assert not notes, notes


# Graph breaks without dynamics in torch 2.13: model 0; forward_backward 1 (Tensor.backward() is not traced);
# traced_backward 0; with_optimizer 4 (Tensor.backward, the two torch._dynamo.graph_break() of
# Optimizer._use_grad, Optimizer.zero_grad is skipped).
# Hooks that must run eagerly (the recorder's optimizer hooks) break the graph where the optimizer calls them:
# the only break dynamics may add, and only where the user compiles optimizer.step() itself.
EAGER_HOOK = "Skip calling `torch.compiler.disable()`d function"


@pytest.mark.parametrize("how", ["model", "forward_backward", "traced_backward", "with_optimizer"])
def test_dynamics_adds_no_graph_break(recorded, how):
    plain, run = _run(how), recorded(how)
    assert run["graphs"] == plain["graphs"]
    if how == "with_optimizer":
        assert set(run["breaks"]) - set(plain["breaks"]) <= {EAGER_HOOK}, run["breaks"]
    else:
        assert run["breaks"] == plain["breaks"]
    if how in ("model", "traced_backward"):
        assert sum(run["breaks"].values()) == 0
