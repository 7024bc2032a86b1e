"""Closure-based steps, ``optimizer.step(closure)``, against the brute-force reference.

The forward and backward pass run inside ``step()``, after the optimizer's pre-step hook: a recorder that
measured at that hook would record the previous step's gradient (at step 0: none at all). Each loop here
computes its reference inside the closure, right after the last backward pass (before unscaling and clipping),
so every test fails on such a stale measurement at step 0 and at every clipped step.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import dynamics
from tests.harness import assert_bit_identical, assert_matches_reference, clone, fresh_model, make_batches, state

STEPS = 5


class SAM(torch.optim.Optimizer):
    """A minimal sharpness-aware step around SGD: ascend to θ + ρ·g/‖g‖ with the gradient already there,
    zero it, let the closure compute the gradient at that point, come back to θ and step with it."""

    def __init__(self, params, lr: float = 0.1, rho: float = 0.05) -> None:
        super().__init__(params, {"lr": lr, "rho": rho})

    @torch.no_grad()
    def step(self, closure):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        offsets = [p.grad * (self.defaults["rho"] / (norm + 1e-12)) for p in params]
        for p, e in zip(params, offsets):
            p.add_(e)
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        for p, e in zip(params, offsets):
            p.sub_(e)
            p.add_(p.grad, alpha=-self.defaults["lr"])
        return loss


def _loss(model, batch, n_micro: int) -> torch.Tensor:
    x_cc, x_mlo, y = batch
    return ((model(x_cc, x_mlo) - y) ** 2).mean() / n_micro


def closure_loop(model, batches, *, style: str, clip: float | None = None, scale: float | None = None,
                 recorder_factory=None) -> list[dict]:
    """A loop that steps with ``optimizer.step(closure)``. ``style``: ``"user"`` (the closure zeroes the
    gradients and runs every micro-batch), ``"lightning"`` (every micro-batch but the last runs before the step,
    the last inside the closure, as Lightning accumulates), ``"sam"`` (the SAM optimizer above). With ``scale``
    the closure scales the loss with a GradScaler and unscales before clipping. Without a recorder returns the
    reference rows: the gradient right after the closure's last backward (unscaled), θ_t, θ_{t+1}."""
    optimizer = SAM(model.parameters()) if style == "sam" else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
    rec = recorder_factory(model, optimizer, scaler) if recorder_factory else None
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for step, micro in enumerate(batches):
        seen = {}
        outside = micro[:-1] if style == "lightning" else []
        inside = micro[-1:] if style == "lightning" else micro
        if style != "user":
            optimizer.zero_grad()
        for batch in outside:
            _loss(model, batch, len(micro)).backward()
        if style == "sam":  # SAM's first gradient, at θ_t, comes before the step
            _loss(model, inside[0], 1).backward()

        def closure():
            if style == "user":
                optimizer.zero_grad()
            for batch in inside:
                loss = _loss(model, batch, len(micro))
                (scaler.scale(loss) if scaler else loss).backward()
            divide = float(scaler.get_scale()) if scaler else 1.0
            seen["g"] = {id(p): p.grad.detach().double() / divide for p in model.parameters()}
            if scaler:
                scaler.unscale_(optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            return loss
        theta = {id(p): p.detach().double().clone() for p in model.parameters()}
        optimizer.step(closure)
        if scaler:
            scaler.update()
        for p in model.parameters():
            g, delta = seen["g"][id(p)], p.detach().double() - theta[id(p)]
            rows.append({"step": step, "param": names[id(p)], "grad_sq": float((g ** 2).sum()),
                         "param_sq": float((theta[id(p)] ** 2).sum()), "update_sq": float((delta ** 2).sum()),
                         "lca": float((g * delta).sum())})
    if rec is not None:
        rec.close()
        return []
    return rows


def _recorded(tmp_path, **loop):
    model = fresh_model()
    reference_model = clone(model)
    micro = loop.pop("micro", 1)
    batches = make_batches(STEPS, micro)

    def factory(m, opt, scaler):
        return dynamics.attach(m, opt, views={"cc": m.cc, "mlo": m.mlo}, out=tmp_path / "run", scaler=scaler,
                               flush_every=3)
    closure_loop(model, batches, recorder_factory=factory, **loop)
    reference = closure_loop(reference_model, batches, **loop)
    assert_bit_identical(state(model), state(reference_model))  # recording does not change training
    return pd.DataFrame(reference), *dynamics.load(tmp_path / "run"), dynamics.read_meta(tmp_path / "run")


CASES = {
    "user": dict(style="user"),
    "user-accumulation-3-clip": dict(style="user", micro=3, clip=0.05),
    "lightning-accumulation-3-clip": dict(style="lightning", micro=3, clip=0.05),
    "grad-scaler-accumulation-2-clip": dict(style="user", micro=2, clip=0.05, scale=2.0 ** 10),
    "sam": dict(style="sam"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_closure_steps_match_brute_force(tmp_path, case):
    loop = dict(CASES[case])
    clip = loop.get("clip")
    reference, per_param, per_step, meta = _recorded(tmp_path, **loop)
    assert_matches_reference(per_param, reference, rtol=2e-5, atol=1e-12)
    total = reference.groupby("step")["grad_sq"].sum()
    recorded = per_param.groupby("step")["grad_sq"].sum()
    # step 0: before its closure runs there is no gradient at all; a later step: not the previous one's
    np.testing.assert_allclose(recorded[0], total[0], rtol=1e-6)
    assert total[0] > 0 and not np.isclose(total[1], total[0], rtol=1e-3)
    clip_factor = per_step.set_index("step")["clip_factor"]
    if clip is None:
        assert clip_factor.isna().all()
    else:  # clipping inside the closure: its factor, and lca against the unclipped gradient (above)
        expected = np.minimum(1.0, clip / (np.sqrt(total) + 1e-6))
        assert (expected < 1).all()
        np.testing.assert_allclose(clip_factor, expected, rtol=1e-5)
    assert not per_step["skipped"].any() and per_step["step"].tolist() == list(range(STEPS))
    assert not meta["notes"] and not meta.get("errors")


def test_closure_then_grad_scaler_step_records_skipped_steps(tmp_path):
    """Lightning's 16-mixed way: the loop calls the closure itself, then ``scaler.step(optimizer)``, which skips
    the step when the gradient overflowed; that step is recorded as skipped, the others as usual."""
    torch.manual_seed(0)
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    rows = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r", scaler=scaler):
        for step, [batch] in enumerate(make_batches(4)):
            def closure():
                optimizer.zero_grad()
                loss = _loss(model, batch, 1) * (math.inf if step == 2 else 1.0)
                scaler.scale(loss).backward()
                rows.append(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()) /
                            float(scaler.get_scale()) ** 2)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                return loss
            closure()
            scaler.step(optimizer)
            scaler.update()
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_step["skipped"].tolist() == [False, False, True, False]
    taken = per_param[per_param["step"] != 2].groupby("step")["grad_sq"].sum()
    np.testing.assert_allclose(taken, [rows[i] for i in (0, 1, 3)], rtol=1e-5)
    assert per_param.loc[per_param["step"] == 2, "lca"].isna().all()


def test_a_closure_without_backward_is_said_loudly(tmp_path):
    """Gradients set by hand inside the closure: no backward pass the recorder could see. The gradient after
    the closure is recorded (not the stale one from before it), with a warning and a note."""
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r") as rec:
        for step in range(2):
            def closure():
                for p in model.parameters():
                    p.grad = torch.full_like(p, step + 1.0)
                return torch.zeros(())
            if step == 0:
                with pytest.warns(RuntimeWarning, match="no backward pass seen"):
                    optimizer.step(closure)
            else:
                optimizer.step(closure)
    per_param, _ = dynamics.load(tmp_path / "r")
    numel = sum(p.numel() for p in model.parameters())
    np.testing.assert_allclose(per_param.groupby("step")["grad_sq"].sum(), [numel, 4.0 * numel])
    assert list(dynamics.read_meta(tmp_path / "r")["notes"]) == [
        "gradient taken at the optimizer step (no backward pass seen)"]
    assert rec.step == 2


class TwiceSGD(torch.optim.Optimizer):
    """Plain SGD that evaluates the closure twice per step (as line searches do)."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            closure()
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
        return loss


def test_a_closure_called_twice_is_noted(tmp_path):
    model = fresh_model()
    optimizer = TwiceSGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r"):
        [(x_cc, x_mlo, y)] = make_batches(1)[0]

        def closure():
            optimizer.zero_grad()
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            loss.backward()
            return loss
        with pytest.warns(RuntimeWarning, match="more than once"):
            optimizer.step(closure)
    notes = dynamics.read_meta(tmp_path / "r")["notes"]
    assert notes == {"the closure was called more than once in one optimizer step: the gradient after its first "
                     "call is recorded": [0]}


def test_closure_steps_with_attribution_and_probe(tmp_path):
    """The parts are called through the same closure step: attribution's parts add up, the probe runs."""
    from tests.harness import SharedColumn
    torch.manual_seed(0)
    model = SharedColumn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    probe = dynamics.ProbeBatch((torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)),
                                torch.randn(8, generator=g), lambda out, y: ((out - y) ** 2).mean())
    with dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                         out=tmp_path / "r", probe=probe, probe_every=2):
        for _ in range(4):
            a, b, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)

            def closure():
                optimizer.zero_grad()
                loss = ((model(a, b) - y) ** 2).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                return loss
            optimizer.step(closure)
    per_param, per_step = dynamics.load(tmp_path / "r", split_shared=False)
    split, _ = dynamics.load(tmp_path / "r")
    assert per_step["probe_change"].notna().sum() == 2 and per_step["clip_factor"].notna().all()
    column = per_param[per_param["param"].astype(str).str.startswith("column.")]
    parts = split[split["attributed"]].groupby(["step", "param"], observed=True)[["lca"]].sum()
    whole = column.groupby(["step", "param"], observed=True)[["lca"]].sum()
    np.testing.assert_allclose(parts.loc[whole.index, "lca"], whole["lca"], rtol=1e-4, atol=1e-9)
    assert not dynamics.read_meta(tmp_path / "r")["notes"]


def test_a_closure_that_raises_reaches_the_loop_and_recording_goes_on(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r"):
        for step, [batch] in enumerate(make_batches(4)):
            def closure():
                if step == 1:
                    raise KeyError("from the closure")
                optimizer.zero_grad()
                loss = _loss(model, batch, 1)
                loss.backward()
                expected.append(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()))
                return loss
            if step == 1:
                with pytest.raises(KeyError, match="from the closure"):
                    optimizer.step(closure)
            else:
                optimizer.step(closure)
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert len(per_step) == 3 and not dynamics.read_meta(tmp_path / "r").get("errors")
    np.testing.assert_allclose(per_param.groupby("step")["grad_sq"].sum(), expected, rtol=1e-5)
