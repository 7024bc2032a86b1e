"""Every recorded quantity against the brute-force reference, under every training set-up of issue 2."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import dynamics
from tests.harness import (DEVICES, Setup, assert_bit_identical, assert_matches_reference, clone, device_or_skip,
                           fresh_model, make_batches, record_beside_reference, state, train)


def _groups(model):
    return [{"params": list(model.cc.parameters()), "lr": 0.05},
            {"params": list(model.mlo.parameters()), "lr": 0.0},
            {"params": list(model.head.parameters()), "lr": 0.02}]


SETUPS = [
    Setup("sgd", lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
    Setup("sgd-momentum-nesterov-wd",
          lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    Setup("adam", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2)),
    Setup("adamw-groups-lr0", lambda m: torch.optim.AdamW(_groups(m), weight_decay=0.1)),
    Setup("adamw-foreach-maximize", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=True,
                                                                 maximize=True, weight_decay=0.1)),
    Setup("sgd-fused", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, fused=True)),
    Setup("accumulation-3", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5), micro=3),
    Setup("clip-norm", lambda m: torch.optim.SGD(m.parameters(), lr=0.1), clip=0.05),
    Setup("grad-scaler", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), loss_scale=2.0 ** 10,
          poison={2: math.inf}),
    Setup("grad-scaler-clip-accumulation", lambda m: torch.optim.SGD(m.parameters(), lr=0.1), micro=2,
          loss_scale=2.0 ** 8, clip=0.05, poison={3: math.nan}),
    Setup("bf16-autocast", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), autocast=torch.bfloat16),
    Setup("fp16-autocast-grad-scaler-clip", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
          loss_scale=2.0 ** 12, clip=0.05, autocast=torch.float16, poison={4: math.inf}),
]


def _recorded(tmp_path, setup: Setup, steps: int = 6, device: str = "cpu", **attach_kwargs):
    recorded = record_beside_reference(tmp_path / "run", setup, steps, device, **attach_kwargs)
    return *recorded, *dynamics.load(tmp_path / "run")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s.name)
def test_quantities_match_brute_force(tmp_path, setup, device, cache_blocking):
    if device == "cuda" and cache_blocking == "alone":
        pytest.skip("on a GPU every tensor goes through the multi-tensor kernels")
    device_or_skip(device)
    model, reference_model, reference, per_param, per_step = _recorded(tmp_path, setup, device=device)
    # the recorder does not change training: parameters bit-identical to the unrecorded run (on a GPU, up to
    # the run-to-run nondeterminism of its kernels)
    if device == "cpu":
        assert_bit_identical(state(model), state(reference_model))
    else:
        torch.testing.assert_close(state(model), state(reference_model), rtol=1e-5, atol=1e-7)
    assert_matches_reference(per_param, reference, rtol=2e-5, atol=1e-12)
    skipped_ref = reference.groupby("step")["skipped"].first()
    assert per_step.set_index("step")["skipped"].to_dict() == skipped_ref.to_dict()
    # a skipped step has no update and no lca, never garbage
    skipped_rows = per_param[per_param["step"].isin(skipped_ref[skipped_ref].index)]
    assert skipped_rows["lca"].isna().all() and skipped_rows["update_sq"].isna().all()
    assert len(skipped_rows) == (len(per_param) // 6) * skipped_ref.sum()


def test_skipped_steps_are_really_exercised():
    """The scaler set-ups would be vacuous if nothing were skipped."""
    for setup in SETUPS:
        if setup.loss_scale:
            reference = train(fresh_model(), setup, make_batches(6, setup.micro))
            assert reference.groupby("step")["skipped"].first().sum() == 1, setup.name


def test_clip_factor_is_recorded(tmp_path):
    setup = next(s for s in SETUPS if s.name == "clip-norm")
    _, _, reference, _, per_step = _recorded(tmp_path, setup)
    total = np.sqrt(reference.groupby("step")["grad_sq"].sum())
    expected = np.minimum(1.0, setup.clip / (total + 1e-6))
    np.testing.assert_allclose(per_step.set_index("step")["clip_factor"], expected, rtol=1e-6)  # measured 1.1e-7
    assert (expected < 1).all()


def test_no_clipping_records_no_clip_factor(tmp_path):
    _, _, _, _, per_step = _recorded(tmp_path, SETUPS[0])
    assert per_step["clip_factor"].isna().all()


def test_learning_rates_per_group(tmp_path):
    _, _, _, _, per_step = _recorded(tmp_path, SETUPS[3])
    assert (per_step["lr_0"] == 0.05).all() and (per_step["lr_1"] == 0.0).all() and (per_step["lr_2"] == 0.02).all()


def test_lr_zero_group_has_zero_update(tmp_path):
    _, _, _, per_param, _ = _recorded(tmp_path, SETUPS[3])
    mlo = per_param[per_param["view"] == "mlo"]
    assert (mlo["update_sq"] == 0).all() and (mlo["lca"] == 0).all() and (mlo["grad_sq"] > 0).all()


@pytest.mark.parametrize("where", ["loss", "after-backward"])
def test_nan_gradient_is_flagged_and_never_raises(tmp_path, where):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = make_batches(4)
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(batches):
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            if step == 1 and where == "loss":  # NaN reaches head.bias's gradient only
                loss = loss + 0.0 * (model.head.bias * float("nan")).sum()
            loss.backward()
            if step == 1 and where == "after-backward":
                with torch.no_grad():
                    model.head.bias.grad.fill_(float("nan"))
            optimizer.step()
            optimizer.zero_grad()
    per_param, _ = dynamics.load(tmp_path / "r")
    at = per_param[per_param["step"] == 1].set_index("param")
    assert not at.loc["head.bias", "finite"]
    if where == "loss":
        assert np.isnan(at.loc["head.bias", "grad_sq"])
    assert at.drop(index="head.bias")["finite"].all()
    assert per_param[per_param["step"] == 0]["finite"].all()
    # the NaN parameter poisons every gradient afterwards: flagged, still recorded, nothing raised
    assert not per_param[per_param["step"] == 2].set_index("param").loc["head.bias", "finite"]
    assert per_param["step"].max() == 3


# every="log" (README: 32 per decade): step t > 0 is recorded when a multiple of 1/32 lies in
# (log10 t, log10(t+1)], i.e. t = ceil(10^(k/32)) - 1 for some k. By hand: 10^(k/32) for k = 1..48 is 1.07 ...
# 1.95 (t = 1), 2.05 ... 2.94 (2), 3.16 ... 3.92 (3), 4.22 4.53 4.87 (4), 5.23 5.62 (5), 6.04 6.49 6.98 (6), 7.50,
# 8.06 8.66, 9.31 10 (9), 10.7, 11.5, 12.4, 13.3, 14.3, 15.4, 16.5, 17.8, 19.1, 20.5, 22.1, 23.7, 25.5, 27.4, 29.4,
# 31.6: every step up to 17, then 19, 20, 22, 23, 25, 27, 29 (18, 21, 24, 26, 28 are not recorded).
LOG_STEPS_OF_30 = list(range(18)) + [19, 20, 22, 23, 25, 27, 29]


@pytest.mark.parametrize("every, expected", [
    (3, list(range(0, 30, 3))),
    (lambda step: step in (1, 4), [1, 4]),
    ("log", LOG_STEPS_OF_30),
])
def test_schedules_record_chosen_steps_with_true_indices(tmp_path, every, expected):
    setup = SETUPS[1]
    model = fresh_model()
    reference = train(clone(model), setup, make_batches(30))
    train(model, setup, make_batches(30), recorder_factory=lambda m, o, s: dynamics.attach(
        m, o, views={"cc": m.cc, "mlo": m.mlo}, out=tmp_path / "run", every=every))
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == expected
    merged = reference.merge(per_param.astype({"param": str}), on=["step", "param"], suffixes=("_ref", ""))
    assert len(merged) == len(per_param) == len(expected) * len(list(model.parameters()))
    np.testing.assert_allclose(merged["lca"], merged["lca_ref"], rtol=2e-5)
    np.testing.assert_allclose(merged["update_sq"], merged["update_sq_ref"], rtol=2e-5)


class TiedAndFrozen(torch.nn.Module):
    """A frozen input layer, and a fusion weight registered under two names and used twice."""

    def __init__(self) -> None:
        super().__init__()
        base = fresh_model()
        self.cc, self.mlo, self.head = base.cc, base.mlo, base.head
        self.cc[0].weight.requires_grad_(False)
        self.fuse = torch.nn.Linear(12, 12)
        self.fuse_again = torch.nn.Linear(12, 12)
        self.fuse_again.weight = self.fuse.weight

    def forward(self, x_cc, x_mlo):
        h = torch.cat([self.cc(x_cc), self.mlo(x_mlo)], dim=1)
        return self.head(torch.tanh(self.fuse_again(torch.tanh(self.fuse(h))))).squeeze(1)


def test_tied_and_frozen_parameters_match_brute_force(tmp_path):
    setup = SETUPS[2]  # Adam
    torch.manual_seed(0)
    model = TiedAndFrozen()
    reference_model = clone(model)
    batches = make_batches(4)
    train(model, setup, batches, recorder_factory=lambda m, o, s: dynamics.attach(
        m, o, views={"cc": m.cc, "mlo": m.mlo}, out=tmp_path / "run"))
    reference = train(reference_model, setup, batches)
    assert_bit_identical(state(model), state(reference_model))
    per_param, _ = dynamics.load(tmp_path / "run")
    assert "cc.0.weight" not in set(per_param["param"].astype(str))          # frozen: skipped
    assert "fuse_again.weight" not in set(per_param["param"].astype(str))    # tied: once, under its first name
    assert_matches_reference(per_param, reference, rtol=2e-5)
    meta = dynamics.read_meta(tmp_path / "run")
    assert meta["frozen"] == ["cc.0.weight"]
    assert next(p for p in meta["parameters"] if p["name"] == "fuse.weight")["aliases"] == ["fuse_again.weight"]


class SometimesUnused(torch.nn.Module):
    """The mlo branch takes part only in even steps: its tensors have no gradient in odd ones."""

    def __init__(self) -> None:
        super().__init__()
        self.cc, self.mlo = torch.nn.Linear(5, 3), torch.nn.Linear(4, 3)
        self.use_mlo = True

    def forward(self, x_cc, x_mlo):
        out = self.cc(x_cc).sum(1)
        return out + self.mlo(x_mlo).sum(1) if self.use_mlo else out


@pytest.mark.parametrize("make_optimizer", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                            lambda p: torch.optim.AdamW(p, lr=0.01)], ids=["sgd", "adamw"])
def test_tensors_without_gradient_in_some_steps(tmp_path, make_optimizer, cache_blocking):
    torch.manual_seed(0)
    model = SometimesUnused()
    optimizer = make_optimizer(model.parameters())
    rows = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(4)):
            model.use_mlo = step % 2 == 0
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            g = {n: None if p.grad is None else p.grad.double().clone() for n, p in model.named_parameters()}
            before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad()
            for n, p in model.named_parameters():
                delta = p.detach().double() - before[n]
                rows.append({"step": step, "param": n, "has_grad_ref": g[n] is not None,
                             "grad_sq_ref": 0.0 if g[n] is None else float((g[n] ** 2).sum()),
                             "update_sq_ref": float((delta ** 2).sum()),
                             "lca_ref": 0.0 if g[n] is None else float((g[n] * delta).sum())})
    per_param, _ = dynamics.load(tmp_path / "r")
    merged = pd.DataFrame(rows).merge(per_param.astype({"param": str}), on=["step", "param"])
    assert len(merged) == len(rows) == len(per_param)
    assert (merged["has_grad"] == merged["has_grad_ref"]).all() and not merged["has_grad"].all()
    for column in ("grad_sq", "update_sq", "lca"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_ref"], rtol=2e-5, atol=1e-12, err_msg=column)


def test_bfloat16_parameters_are_measured_exactly(tmp_path, cache_blocking):
    """θ_t is kept in float32 for low-precision tensors, so Δθ between two bfloat16 values is exact."""
    torch.manual_seed(0)
    model = fresh_model().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rows = []
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(3)):
            ((model(x_cc.bfloat16(), x_mlo.bfloat16()) - y.bfloat16()) ** 2).mean().backward()
            g = {n: p.grad.double().clone() for n, p in model.named_parameters()}
            before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad()
            for n, p in model.named_parameters():
                delta = p.detach().double() - before[n]
                rows.append({"step": step, "param": n, "grad_sq_ref": float((g[n] ** 2).sum()),
                             "param_sq_ref": float((before[n] ** 2).sum()),
                             "update_sq_ref": float((delta ** 2).sum()), "lca_ref": float((g[n] * delta).sum())})
    per_param, _ = dynamics.load(tmp_path / "r")
    merged = pd.DataFrame(rows).merge(per_param.astype({"param": str}), on=["step", "param"])
    assert len(merged) == len(rows) == len(per_param)
    for column in ("grad_sq", "param_sq", "update_sq", "lca"):  # float32 reductions of exact bfloat16 inputs
        np.testing.assert_allclose(merged[column], merged[f"{column}_ref"], rtol=1e-5, atol=1e-12, err_msg=column)


def test_a_step_the_loop_skips_itself_is_recorded_as_skipped(tmp_path):
    """No scaler, no clipping: the loop drops step 1 (zero_grad without step). Its gradient was not
    measured, so grad_sq is NaN but the tensors are not flagged non-finite; the next step is step 2."""
    model = fresh_model()
    reference = clone(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r"):
        for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(4)):
            for m, opt in ((model, optimizer), (reference, ref_optimizer)):
                ((m(x_cc, x_mlo) - y) ** 2).mean().backward()
                if step != 1:
                    opt.step()
                opt.zero_grad()
    assert_bit_identical(state(model), state(reference))
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_step["step"].tolist() == [0, 1, 2, 3]
    assert per_step["skipped"].tolist() == [False, True, False, False]
    skipped = per_param[per_param["step"] == 1]
    assert skipped["grad_sq"].isna().all() and skipped["lca"].isna().all() and skipped["update_sq"].isna().all()
    assert skipped["finite"].all() and skipped["param_sq"].gt(0).all()
    assert per_param[per_param["step"] != 1]["grad_sq"].notna().all()
