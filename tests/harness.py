"""One harness for every recorder test: a small two-view model, training set-ups, and a brute-force reference.

The reference trains an identical copy of the model with the plain loop (no recorder) and computes every
quantity defined in the README ("What is recorded") directly in float64 from cloned tensors: the gradient right after the last
backward pass (divided by the loss scale when one is used), θ_t before the optimizer step, θ_{t+1} after it, and
(the ``UpdateAlignment`` plug-in) the dot product of this step's Δθ with the previous step's, where both were taken.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

import dynamics


class TwoView(nn.Module):
    """Two columns (one per view) with a BatchNorm, a fusion head; small enough for many set-ups per test."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.cc = nn.Sequential(nn.Linear(5, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Linear(width, width))
        self.mlo = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x_cc: torch.Tensor, x_mlo: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cc(x_cc), self.mlo(x_mlo)], dim=1)).squeeze(1)


class SharedColumn(nn.Module):
    """One column called on both views (attribution), a head on the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.column = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.head = nn.Linear(12, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.column(a), self.column(b)], 1)).squeeze(1)


class ConvColumn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class AttentionColumn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):  # x: (batch, tokens, 4)
        h = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return h.mean(dim=1)


class CustomColumn(nn.Module):
    """Parameters used through arbitrary tensor maths, not a library layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4) * 0.5)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return torch.tanh(x @ self.w) * self.scale.exp() + self.w.sum(0).sin()


def _inputs(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    shape = {"conv": (n, 1, 6, 6), "attention": (n, 3, 4), "custom": (n, 3)}[kind]
    return torch.randn(*shape, generator=g)


COLUMNS = {"conv": ConvColumn, "attention": AttentionColumn, "custom": CustomColumn}


class SharedModel(nn.Module):
    """One column for both views; ``detach`` makes one view's call use detached parameters (reference)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.column = COLUMNS[kind]()
        self.head = nn.Linear(8, 1)

    def represent(self, x, detached: bool):
        if not detached:
            return self.column(x)
        return functional_call(self.column, {n: p.detach() for n, p in self.column.named_parameters()}, (x,))

    def forward(self, x_cc, x_mlo, detach: str | None = None, context: bool = False):
        if context:  # explicit attribution, calls in reverse order on purpose
            with dynamics.view("mlo"):
                h_mlo = self.represent(x_mlo, detach == "mlo")
            with dynamics.view("cc"):
                h_cc = self.represent(x_cc, detach == "cc")
        else:
            h_cc = self.represent(x_cc, detach == "cc")
            h_mlo = self.represent(x_mlo, detach == "mlo")
        return self.head(torch.cat([h_cc, h_mlo], 1)).squeeze(1)


def make_batches(steps: int, micro: int = 1, seed: int = 1, n: int = 8) -> list[list[tuple]]:
    """Deterministic data: ``steps`` optimizer steps of ``micro`` micro-batches each."""
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(n, 5, generator=g), torch.randn(n, 4, generator=g), torch.randn(n, generator=g))
             for _ in range(micro)] for _ in range(steps)]


@dataclass
class Setup:
    """A training set-up: optimizer factory and what happens between backward and step."""

    name: str
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    micro: int = 1
    clip: float | None = None
    loss_scale: float | None = None         # a GradScaler is used with this initial scale
    poison: dict[int, float] = field(default_factory=dict)  # step → value multiplied into the loss (inf/nan)
    autocast: torch.dtype | None = None     # the forward pass runs under torch.autocast with this dtype


def train(model: nn.Module, setup: Setup, batches, recorder_factory=None, after_step=None):
    """The user's plain loop. With ``recorder_factory`` the recorder is attached; else the brute-force
    reference rows are computed. Returns the list of reference rows (empty when recording)."""
    optimizer = setup.make_optimizer(model)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, init_scale=setup.loss_scale) if setup.loss_scale else None
    rec = recorder_factory(model, optimizer, scaler) if recorder_factory else None
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    names = {id(p): n for n, p in model.named_parameters()}
    rows: list[dict] = []
    last_delta: dict[int, torch.Tensor] = {}  # Δθ of the previous step, if it was taken
    for step, micro_batches in enumerate(batches):
        for x_cc, x_mlo, y in (tuple(t.to(device) for t in b) for b in micro_batches):
            with torch.autocast(device.type, dtype=setup.autocast, enabled=setup.autocast is not None):
                out = model(x_cc, x_mlo)
            loss = ((out.float() - y) ** 2).mean() / len(micro_batches)
            if step in setup.poison:
                loss = loss * setup.poison[step]
            (scaler.scale(loss) if scaler else loss).backward()
        if rec is None:
            scale = float(scaler.get_scale()) if scaler else 1.0
            g = {id(p): (p.grad.detach().double() / scale).clone() for p in params if p.grad is not None}
            theta = {id(p): p.detach().double().clone() for p in params}
        if scaler:
            scaler.unscale_(optimizer)
        if setup.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
        if scaler:
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped = scaler.get_scale() < before
        else:
            optimizer.step()
            skipped = False
        optimizer.zero_grad()
        if after_step:
            after_step(step, rec)
        if rec is None:
            deltas = {}
            for p in params:
                gp = g.get(id(p), torch.zeros_like(theta[id(p)]))
                delta = deltas[id(p)] = p.detach().double() - theta[id(p)]
                aligned = not skipped and id(p) in last_delta
                rows.append({"step": step, "param": names[id(p)], "grad_sq": float((gp ** 2).sum()),
                             "param_sq": float((theta[id(p)] ** 2).sum()),
                             "update_sq": np.nan if skipped else float((delta ** 2).sum()),
                             "lca": np.nan if skipped else float((gp * delta).sum()), "skipped": skipped,
                             "update_dot": float((last_delta[id(p)] * delta).sum()) if aligned else np.nan})
            last_delta = {} if skipped else deltas
    if rec is not None:
        rec.close()
    return pd.DataFrame(rows)


def logged_steps(model: nn.Module, optimizer: torch.optim.Optimizer, rec, steps: int, seed: int = 1) -> None:
    """``steps`` plain optimizer steps of the harness's batches (micro-batches summed), each step's last loss
    given to ``rec.log``: the loop the store's tests write runs with."""
    for micro in make_batches(steps, seed=seed):
        for x_cc, x_mlo, y in micro:
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        rec.log(loss=loss)


def record_beside_reference(out, setup: Setup, steps: int = 6, device: str = "cpu", flush_every: int = 4,
                            **attach_kwargs):
    """Train a fresh model with the recorder attached (``out``, views cc and mlo) and an identical copy with the
    plain loop: (recorded model, reference model, the reference rows)."""
    model = fresh_model().to(device)
    reference_model = clone(model)
    batches = make_batches(steps, setup.micro)

    def factory(m, opt, scaler):
        return dynamics.attach(m, opt, views={"cc": m.cc, "mlo": m.mlo}, out=out, scaler=scaler,
                               flush_every=flush_every, **attach_kwargs)

    train(model, setup, batches, recorder_factory=factory)
    return model, reference_model, train(reference_model, setup, batches)


QUANTITIES = ("grad_sq", "param_sq", "update_sq", "lca")


def assert_matches_reference(per_param: pd.DataFrame, reference: pd.DataFrame, columns=QUANTITIES, *,
                             rtol: float, atol: float = 0.0, atol_of_max: float = 0.0) -> pd.DataFrame:
    """Every recorded (step, param) row matches one reference row and every reference row is recorded; per
    column |recorded − reference| ≤ atol + atol_of_max·max|reference| + rtol·|reference| (NaN only where the
    reference has NaN). Returns the merged table (reference columns suffixed ``_ref``)."""
    merged = reference.merge(per_param.astype({"param": str}), on=["step", "param"], suffixes=("_ref", ""))
    assert len(merged) == len(reference) == len(per_param)
    for column in columns:
        ref = merged[f"{column}_ref"]
        scale = atol_of_max * np.abs(ref).max() if atol_of_max else 0.0
        np.testing.assert_allclose(merged[column], ref, rtol=rtol, atol=atol + scale, equal_nan=True,
                                   err_msg=column)
    return merged

def fresh_model(seed: int = 0) -> TwoView:
    torch.manual_seed(seed)
    return TwoView()


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers, for bit-identity checks."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) or (a[key].isnan() == b[key].isnan()).all() and torch.equal(
            a[key].nan_to_num(), b[key].nan_to_num()), f"{key} differs"


SETUPS_FOR_LIFECYCLE = Setup("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))


DEVICES = ["cpu", "cuda"]


def device_or_skip(name: str) -> torch.device:
    """The device for a parametrised test; CUDA cases skip where there is no GPU."""
    import pytest
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(name)
