"""Optimizer steps without gradients: a legal loop (a skipped batch, a warm-up step, a GAN-style loop that steps
an optimizer whose parameters got no gradient) never loses its recording.

The promise under test: such a step is recorded (its step counted, its rows flagged ``has_grad`` false where
the tensor had no gradient) and every step after it is recorded as the plain loop's brute force says, with no
error in meta.json.
"""
import copy
import warnings

import numpy as np
import pytest
import torch

import dynamics
from tests.harness import DEVICES, TwoView, device_or_skip, make_batches

# per step: which part of the model the loss reaches ("none": optimizer.step() with no backward pass at all)
PLAN = ["none", "all", "cc", "none", "all"]


def _loss(model, x_cc, x_mlo, y, reach):
    if reach == "cc":  # only the cc column gets a gradient; mlo and the head get none
        return model.cc(x_cc).square().mean()
    return ((model(x_cc, x_mlo) - y) ** 2).mean()


def _run(model, plan, out=None):
    """The plain loop; with ``out`` recorded. Returns the brute-force rows {(step, name): (g², θ², Δθ², lca)}."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out) if out else None
    names = dict(model.named_parameters())
    rows = {}
    for step, (reach, micro) in enumerate(zip(plan, make_batches(len(plan), seed=3))):
        if reach != "none":
            device = next(model.parameters()).device
            for batch in micro:
                _loss(model, *(t.to(device) for t in batch), reach).backward()
        grads = {n: None if p.grad is None else p.grad.detach().double().clone() for n, p in names.items()}
        theta = {n: p.detach().double().clone() for n, p in names.items()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for n, p in names.items():
            g = torch.zeros_like(theta[n]) if grads[n] is None else grads[n]
            delta = p.detach().double() - theta[n]
            rows[step, n] = (float(g.square().sum()), float(theta[n].square().sum()),
                             float(delta.square().sum()), float((g * delta).sum()), grads[n] is not None)
    if rec:
        rec.close()
    return rows


@pytest.mark.parametrize("device", DEVICES)  # on a GPU every tensor goes through the multi-tensor kernels
@pytest.mark.parametrize("width", [6, 200])  # 200: a 200x200 weight is measured alone on a CPU (cache-blocked)
def test_steps_without_gradients_are_recorded_and_recording_goes_on(tmp_path, width, cache_blocking, device):
    torch.manual_seed(0)
    model = TwoView(width).to(device_or_skip(device))
    reference = _run(copy.deepcopy(model), PLAN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(model, PLAN, out=tmp_path / "run")
    stopped = [str(w.message) for w in caught if "recording stopped" in str(w.message)]
    assert not stopped, stopped
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["status"] == "closed" and not meta.get("errors"), meta.get("errors")
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(len(PLAN)))
    assert not per_step["skipped"].any()
    for row in per_param.itertuples(index=False):
        g2, t2, d2, lca, has = reference[row.step, row.param]
        assert bool(row.has_grad) == has, (row.step, row.param)
        np.testing.assert_allclose([row.grad_sq, row.param_sq, row.update_sq, row.lca], [g2, t2, d2, lca],
                                   rtol=1e-5, atol=1e-9, err_msg=f"step {row.step} {row.param}")
    gradless = per_param.groupby("step")["has_grad"].any()
    assert gradless.tolist() == [reach != "none" for reach in PLAN]


def test_a_step_without_gradients_is_noted_and_counted_as_such_not_as_non_finite(tmp_path):
    torch.manual_seed(0)
    _run(TwoView(), PLAN, out=tmp_path / "run")
    notes = dynamics.read_meta(tmp_path / "run")["notes"]
    [(note, steps)] = [(k, v) for k, v in notes.items() if "no gradient" in k]
    assert steps == [0, 3] and "has_grad false" in note
    per_param, per_step = dynamics.load(tmp_path / "run")
    [ex] = dynamics.analysis.exclusions(per_param, per_step).to_dict("records")
    assert (ex["recorded_steps"], ex["used_steps"], ex["skipped_steps"], ex["gradless_steps"],
            ex["nonfinite_steps"]) == (5, 3, 0, 2, 0)
