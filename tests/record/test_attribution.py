"""Per-view attribution inside a shared module against brute-force references.

Reference for per-call attribution: the backward once per view with the *other* view's call made on detached
parameters (``torch.func.functional_call``), so only this view's call carries gradient to the weights.
Reference for per-row attribution on a stacked batch: ∂L/∂y of the module output, masked to one view's rows,
pulled back with ``torch.autograd.grad``. Both are computed with plain autograd (harness.SharedModel, this file).
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

import dynamics
from tests.harness import ConvColumn, SharedModel, _inputs


def _buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def _restore(model, saved):
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(saved[n])


def _loss(out, y):
    return ((out - y) ** 2).mean()


def _run(kind: str, tmp_path, *, steps=3, micro=1, clip=None, context=False, scale=None, seed=0):
    """Train a recorded copy and a reference copy; return recorded table, reference rows, and both models."""
    torch.manual_seed(seed)
    recorded = SharedModel(kind)
    reference = copy.deepcopy(recorded)
    g = torch.Generator().manual_seed(seed + 1)
    data = [[(_inputs(kind, 6, g), _inputs(kind, 6, g), torch.randn(6, generator=g)) for _ in range(micro)]
            for _ in range(steps)]
    column_names = [n for n, _ in reference.named_parameters() if n.startswith("column.")]

    # recorded run
    opt = torch.optim.SGD(recorded.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
    rec = dynamics.attach(recorded, opt, views=["cc", "mlo"], attribute={recorded.column: ["cc", "mlo"]},
                          out=tmp_path / "run", scaler=scaler)
    for batch in data:
        for x_cc, x_mlo, y in batch:
            loss = _loss(recorded(x_cc, x_mlo, context=context), y) / micro
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_(recorded.parameters(), clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad()
    rec.close()

    # reference run: per-view gradients by detaching the other view's call
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    params = dict(reference.named_parameters())
    rows = []
    for step, batch in enumerate(data):
        parts = {v: {n: torch.zeros_like(params[n], dtype=torch.float64) for n in column_names} for v in ("cc", "mlo")}
        for x_cc, x_mlo, y in batch:
            saved = _buffers(reference)
            for view, other in (("cc", "mlo"), ("mlo", "cc")):
                loss = _loss(reference(x_cc, x_mlo, detach=other, context=context), y) / micro
                grads = torch.autograd.grad(loss, [params[n] for n in column_names], allow_unused=True)
                for n, gr in zip(column_names, grads):
                    if gr is not None:
                        parts[view][n] += gr.double()
                _restore(reference, saved)
            _loss(reference(x_cc, x_mlo, context=context), y).div(micro).backward()
        before = {n: params[n].detach().double().clone() for n in column_names}
        if clip:
            torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
        ref_opt.step()
        ref_opt.zero_grad()
        for n in column_names:
            delta = params[n].detach().double() - before[n]
            cross = float((parts["cc"][n] * parts["mlo"][n]).sum())
            for view in ("cc", "mlo"):
                rows.append({"step": step, "param": n, "view": view, "grad_sq": float((parts[view][n] ** 2).sum()),
                             "lca": float((parts[view][n] * delta).sum()), "cross": cross})
    per_param, _ = dynamics.load(tmp_path / "run")
    return per_param, pd.DataFrame(rows), recorded, reference


def _compare(per_param, reference, rtol=1e-4):
    got = per_param[per_param["attributed"]].astype({"param": str, "view": str})
    merged = reference.merge(got, on=["step", "param", "view"], suffixes=("_ref", ""))
    assert len(merged) == len(reference) == len(got)
    scale = {c: np.abs(merged[f"{c}_ref"]).max() for c in ("grad_sq", "lca", "cross")}
    for column in ("grad_sq", "lca", "cross"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_ref"], rtol=rtol,
                                   atol=1e-6 * scale[column], err_msg=column)
    assert (reference.groupby("view")["grad_sq"].sum() > 0).all()


@pytest.mark.parametrize("kind", ["conv", "attention", "custom"])
def test_per_call_attribution_matches_detached_backward(tmp_path, kind, cache_blocking):
    per_param, reference, recorded, plain = _run(kind, tmp_path)
    _compare(per_param, reference)
    for (n, a), (_, b) in zip(recorded.state_dict().items(), plain.state_dict().items()):
        if kind == "custom":
            # w is used twice inside each call: with aliases the four gradient terms are added in another
            # order (per call first), which can change the last bit; nothing else may differ
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(a, b), f"{n}: the recorder changed training"


def test_explicit_view_context_overrides_call_order(tmp_path):
    per_param, reference, _, _ = _run("custom", tmp_path, context=True)
    _compare(per_param, reference)


def test_parts_sum_to_the_tensor_totals(tmp_path):
    per_param, _, _, _ = _run("conv", tmp_path, clip=0.05)
    whole, _ = dynamics.load(tmp_path / "run", split_shared=False)
    whole = whole[whole["view"] == "cc+mlo"].set_index(["step", "param"])
    parts = per_param[per_param["attributed"]].groupby(["step", "param"], observed=True)
    # Σ_v lca_v = the tensor's lca; Σ_v (‖g_v‖² + g_v·(g − g_v)) = ‖g‖²
    lca = parts["lca"].sum()
    gsq = parts.apply(lambda f: (f["grad_sq"] + f["cross"]).sum())
    np.testing.assert_allclose(lca.to_numpy(), whole.loc[lca.index, "lca"].to_numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(gsq.to_numpy(), whole.loc[gsq.index, "grad_sq"].to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "custom"])
def test_composes_with_accumulation_clipping_and_loss_scaling(tmp_path, kind, cache_blocking):
    per_param, reference, recorded, plain = _run(kind, tmp_path, micro=2, clip=0.05)
    _compare(per_param, reference)
    per_param, reference, _, _ = _run(kind, tmp_path / "amp", micro=2, clip=0.05, scale=2.0 ** 12)
    _compare(per_param, reference)


class StackedModel(nn.Module):
    """Both views in one call of the column: rows [0, n) are cc, rows [n, 2n) are mlo."""

    def __init__(self) -> None:
        super().__init__()
        self.column = ConvColumn()
        self.head = nn.Linear(8, 1)

    def forward(self, x_cc, x_mlo):
        h = self.column(torch.cat([x_cc, x_mlo]))
        n = x_cc.shape[0]
        return self.head(torch.cat([h[:n], h[n:]], 1)).squeeze(1)


def _halves(x):
    n = x.shape[0] // 2
    return {"cc": torch.arange(n), "mlo": torch.arange(n, 2 * n)}


def test_stacked_batch_rows_with_batchnorm_in_training(tmp_path, cache_blocking):
    torch.manual_seed(0)
    model = StackedModel()
    plain = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(5, 1, 6, 6, generator=g), torch.randn(5, 1, 6, 6, generator=g), torch.randn(5, generator=g))
            for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, opt, views=["cc", "mlo"], attribute={model.column: dynamics.rows(_halves, ["cc", "mlo"])},
                         out=tmp_path / "run"):
        for x_cc, x_mlo, y in data:
            _loss(model(x_cc, x_mlo), y).backward()
            opt.step()
            opt.zero_grad()
    per_param, _ = dynamics.load(tmp_path / "run")

    # reference: mask ∂L/∂y to one view's rows and pull it back through the column
    ref_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    names = [n for n, _ in plain.column.named_parameters()]
    params = [p for _, p in plain.column.named_parameters()]
    rows = []
    for step, (x_cc, x_mlo, y) in enumerate(data):
        h = plain.column(torch.cat([x_cc, x_mlo]))
        n = x_cc.shape[0]
        loss = _loss(plain.head(torch.cat([h[:n], h[n:]], 1)).squeeze(1), y)
        (dh,) = torch.autograd.grad(loss, h, retain_graph=True)
        parts = {}
        for view, sl in (("cc", slice(0, n)), ("mlo", slice(n, 2 * n))):
            masked = torch.zeros_like(dh)
            masked[sl] = dh[sl]
            parts[view] = torch.autograd.grad(h, params, masked, retain_graph=True)
        loss.backward()
        for p, a, b in zip(params, parts["cc"], parts["mlo"]):  # the parts add up to the gradient
            torch.testing.assert_close(a + b, p.grad, rtol=1e-5, atol=1e-6)
        before = [p.detach().double().clone() for p in params]
        ref_opt.step()
        ref_opt.zero_grad()
        for name, p, b0, a, b in zip(names, params, before, parts["cc"], parts["mlo"]):
            delta = p.detach().double() - b0
            cross = float((a.double() * b.double()).sum())
            for view, part in (("cc", a), ("mlo", b)):
                rows.append({"step": step, "param": f"column.{name}", "view": view,
                             "grad_sq": float((part.double() ** 2).sum()), "lca": float((part.double() * delta).sum()),
                             "cross": cross})
    _compare(per_param, pd.DataFrame(rows))
    for (k, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k


def test_attribute_errors_name_the_problem(tmp_path):
    model = SharedModel("custom")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        dynamics.attach(model, opt, views=["cc", "mlo"], attribute={"nope": ["cc", "mlo"]}, out=tmp_path / "a")
    with pytest.raises(ValueError, match="needs a list of view names"):
        dynamics.attach(model, opt, views=["cc", "mlo"], attribute={model.column: "cc"}, out=tmp_path / "b")
    with pytest.raises(ValueError, match="claimed by two views"):
        dynamics.attach(model, opt, views={"cc": model.column, "mlo": []}, attribute={model.column: ["cc", "mlo"]},
                        out=tmp_path / "c")


def test_calls_past_the_listed_order_are_noted_not_lost(tmp_path):
    torch.manual_seed(0)
    model = SharedModel("custom")
    reference = copy.deepcopy(model).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    with dynamics.attach(model, opt, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                         out=tmp_path / "r"):
        loss = model(x, x).sum() + model.column(x).sum()  # a third call in the same forward pass
        loss.backward()
        opt.step()
    notes = dynamics.read_meta(tmp_path / "r")["notes"]
    assert any(text.startswith("1 calls of an attributed module matched no view") for text in notes)

    # reference in float64: each call's gradient with the other two calls made on detached parameters
    x = x.double()
    column = reference.column
    names = [n for n, _ in column.named_parameters()]
    live, frozen = dict(column.named_parameters()), {n: q.detach() for n, q in column.named_parameters()}

    def call(k: int, which: int):
        return functional_call(column, live if k == which else frozen, (x,))

    g = {}
    for which, view in enumerate(("cc", "mlo", "third")):
        out = reference.head(torch.cat([call(0, which), call(1, which)], 1)).squeeze(1).sum() + call(2, which).sum()
        g[view] = dict(zip(names, torch.autograd.grad(out, [live[n] for n in names])))
    before = {n: live[n].detach().clone() for n in names}
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    (reference(x, x).sum() + column(x).sum()).backward()
    total = {n: live[n].grad for n in names}
    for n in names:  # the three calls' gradients are the whole gradient
        torch.testing.assert_close(g["cc"][n] + g["mlo"][n] + g["third"][n], total[n], rtol=1e-12, atol=1e-12)
    ref_opt.step()
    delta = {n: live[n].detach() - before[n] for n in names}

    split, _ = dynamics.load(tmp_path / "r")
    whole, _ = dynamics.load(tmp_path / "r", split_shared=False)
    parts = split[split["attributed"]].astype({"param": str, "view": str}).set_index(["param", "view"])
    whole = whole.astype({"param": str}).set_index("param")
    assert sorted(parts.index) == sorted((f"column.{n}", v) for n in names for v in ("cc", "mlo"))
    for n in names:
        key = f"column.{n}"
        for view in ("cc", "mlo"):
            row = parts.loc[(key, view)]
            assert row["grad_sq"] == pytest.approx(float((g[view][n] ** 2).sum()), rel=1e-5)
            assert row["lca"] == pytest.approx(float((g[view][n] * delta[n]).sum()), rel=5e-5)
            assert row["cross"] == pytest.approx(float((g["cc"][n] * g["mlo"][n]).sum()), rel=1e-5)
        assert whole.loc[key, "lca"] == pytest.approx(float((total[n] * delta[n]).sum()), rel=1e-5)
        # the third call is in no part: exactly its share is missing from the parts' sum
        missing = whole.loc[key, "lca"] - parts.loc[key, "lca"].sum()
        third = float((g["third"][n] * delta[n]).sum())
        assert abs(third) > 1e-3 * abs(whole.loc[key, "lca"])
        assert missing == pytest.approx(third, rel=1e-4, abs=1e-6 * abs(whole.loc[key, "lca"]))


class SharedAlsoUsedByHead(nn.Module):
    """The shared column's weight is used outside the column too: its gradient is partly unattributed."""

    def __init__(self) -> None:
        super().__init__()
        self.column = nn.Linear(3, 3)
        self.head = nn.Linear(6, 1)

    def forward(self, x_cc, x_mlo):
        h = torch.cat([self.column(x_cc), self.column(x_mlo)], 1)
        return self.head(h).squeeze(1) + (x_cc @ self.column.weight).sum(1)


def test_gradient_from_outside_the_attributed_calls_is_noted(tmp_path):
    torch.manual_seed(0)
    model = SharedAlsoUsedByHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, opt, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                         out=tmp_path / "r"):
        for _ in range(2):
            x = torch.randn(4, 3)
            model(x, x + 1).sum().backward()
            opt.step()
            opt.zero_grad()
    notes = dynamics.read_meta(tmp_path / "r")["notes"]
    (steps,) = [v for k, v in notes.items() if k.startswith("part of a shared tensor's gradient")]
    assert steps == [0, 1]


def test_no_note_when_the_parts_add_up(tmp_path):
    _run("conv", tmp_path)
    assert not dynamics.read_meta(tmp_path / "run")["notes"]


class OneViewPerStep(nn.Module):
    """The shared column runs once per forward pass, for the view given: a view's part is then the whole
    gradient of the column, which autograd hands to the parameter as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.column = nn.Linear(5, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x, view_name: str):
        with dynamics.view(view_name):
            h = self.column(x)
        return self.head(h).squeeze(1)


@pytest.mark.parametrize("micro", [1, 2])
def test_a_kept_part_is_the_backward_gradient_after_clipping_and_accumulation(tmp_path, micro, cache_blocking):
    """The recorder keeps autograd's gradient tensors as the views' parts: clipping p.grad in place, and a second
    micro-batch added into p.grad, must change neither (reference: the gradients from torch.autograd.grad)."""
    torch.manual_seed(0)
    model = OneViewPerStep()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    data = [[(torch.randn(4, 5, generator=g), torch.randn(4, generator=g)) for _ in range(micro)] for _ in range(3)]
    views = ["cc", "mlo", "cc"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, opt, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                         out=tmp_path / "run"):
        for view_name, batch in zip(views, data):
            for x, y in batch:
                _loss(model(x, view_name), y).div(micro).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # far below the gradient's norm
            opt.step()
            opt.zero_grad()
    got = dynamics.load(tmp_path / "run")[0]
    got = got[got["attributed"]].astype({"param": str, "view": str}).set_index(["step", "param", "view"])
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    params = dict(reference.column.named_parameters())
    for step, (view_name, batch) in enumerate(zip(views, data)):
        raw = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        for x, y in batch:
            loss = _loss(reference(x, view_name), y).div(micro)
            for n, grad in zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True)):
                raw[n] += grad.double()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e-3)
        ref_opt.step()
        ref_opt.zero_grad()
        for n, part in raw.items():
            row = got.loc[(step, f"column.{n}", view_name)]
            np.testing.assert_allclose(row["grad_sq"], float((part ** 2).sum()), rtol=1e-5)
            other = got.loc[(step, f"column.{n}", "mlo" if view_name == "cc" else "cc")]
            assert other["grad_sq"] == 0.0 and other["cross"] == 0.0


class AddedWeight(nn.Module):
    """y = x + w with w of x's shape: autograd hands the alias the incoming gradient itself, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 4))

    def forward(self, x):
        return x + self.w


def test_a_part_that_is_the_callers_own_gradient_is_never_written(tmp_path):
    """The gradient reaching the alias can be a tensor the caller holds (here the one given to backward): the
    second micro-batch's part must be added to it out of place, leaving the caller's tensor as it was."""
    model = AddedWeight()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    given = [torch.randn(3, 4, generator=g) for _ in range(2)]
    kept = [t.clone() for t in given]
    with dynamics.attach(model, opt, views=["cc"], attribute={model: ["cc"]}, out=tmp_path / "run"):
        for grad_out in given:
            model(torch.randn(3, 4, generator=g)).backward(grad_out)
        opt.step()
    assert all(torch.equal(t, k) for t, k in zip(given, kept)), "the recorder wrote into the caller's gradient"
    got = dynamics.load(tmp_path / "run")[0]
    row = got[got["attributed"]].iloc[0]
    np.testing.assert_allclose(row["grad_sq"], float(((kept[0].double() + kept[1].double()) ** 2).sum()), rtol=1e-6)
