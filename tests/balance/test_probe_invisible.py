"""The recorder's probe changes nothing: every pass it runs inside ``optimizer.step()`` is invisible to every
intervention, whatever random generator the intervention draws from.

Each intervention trains the same model on the same batches three times: with no recorder, with a recorder,
and with a recorder and a probe at every step. The parameters must be equal bit for bit (``torch.equal``) and
the logged decisions equal; the probe's three points must see one loss function (the same masks), so its
Simpson residual is tiny against the loss change (it was 41 % when the probe drew masks from the user's
generator).
"""
import numpy as np
import pytest
import torch
from torch import nn

import dynamics
from dynamics.balance import ModalityDropout, modality_dropout, ogm_ge, rebalance
from tests.balance.common import TinyTwoView, batch

STEPS = 6


class _WithDropoutModule(TinyTwoView):
    """Modality dropout as a module of the model's own forward, drawing from the user's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = ModalityDropout(["a", "b"], p=0.5, generator=torch.Generator().manual_seed(5))

    def forward(self, xa, xb):
        ha, hb = self.drop([self.a(xa), self.b(xb)])
        return self.head(torch.cat([ha, hb], dim=1))


def _intervene(kind, model, optimizer, criterion):
    widths = {"a": 4, "b": 2}
    branches = {"a": model.a, "b": model.b}
    if kind == "dropout":
        return modality_dropout(model.head, widths, p=0.5)
    if kind == "dropout_generator":
        return modality_dropout(model.head, widths, p=0.5, generator=torch.Generator().manual_seed(3))
    if kind == "dropout_module_generator":
        return None  # the model's own module
    if kind == "rebalance":
        return rebalance(model.head, optimizer, branches, widths=widths, threshold=0.0, every=2, steps=1)
    if kind == "ogm_ge":
        return ogm_ge(model.head, optimizer, branches, loss=criterion, widths=widths, alpha=0.5)
    raise AssertionError(kind)


def _train(kind, out, probe, order="after"):
    """``order``: the intervention made after attach, or before it (then the probe's check of its batch at
    attach runs through the intervention's hooks too)."""
    torch.manual_seed(0)
    model = _WithDropoutModule() if kind == "dropout_module_generator" else TinyTwoView()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    criterion = nn.CrossEntropyLoss()
    rec = handle = None
    if order == "before":
        handle = _intervene(kind, model, optimizer, criterion)
    if out is not None:
        g = torch.Generator().manual_seed(9)
        xa, xb, y = batch(g, n=32)
        batch_probe = dynamics.ProbeBatch((xa, xb), y, nn.functional.cross_entropy) if probe else None
        rec = dynamics.attach(model, optimizer, views={"a": model.a, "b": model.b}, out=out, probe=batch_probe,
                              probe_every=1)
    if order == "after":
        handle = _intervene(kind, model, optimizer, criterion)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # the global stream dropout draws from without a generator
    for _ in range(STEPS):
        xa, xb, y = batch(g)
        criterion(model(xa, xb), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    if handle is not None:
        handle.remove()
    if rec is not None:
        rec.close()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


KINDS = ["dropout", "dropout_generator", "dropout_module_generator", "rebalance", "ogm_ge"]


@pytest.mark.parametrize("order", ["after", "before"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_probe_changes_no_parameter_and_no_decision_of_any_intervention(tmp_path, kind, order):
    plain = _train(kind, None, probe=False, order=order)
    recorded = _train(kind, tmp_path / "recorded", probe=False, order=order)
    probed = _train(kind, tmp_path / "probed", probe=True, order=order)
    for name in plain:
        assert torch.equal(plain[name], recorded[name]), f"{kind}: the recorder changed {name}"
        assert torch.equal(plain[name], probed[name]), f"{kind}: the probe changed {name}"
    _, without = dynamics.load(tmp_path / "recorded")
    _, with_probe = dynamics.load(tmp_path / "probed")
    decisions = [c for c in without.columns if c.startswith(("present_", "rebalanced_", "rebalance_", "ogm_"))]
    assert decisions or kind == "dropout_module_generator" and not decisions
    for column in decisions:
        np.testing.assert_array_equal(with_probe[column].to_numpy(), without[column].to_numpy(), err_msg=column)
    # one loss function at the probe's three points: Simpson's rule leaves next to nothing of the change
    change = with_probe["probe_change"].abs().to_numpy()
    residual = with_probe["probe_residual_simpson"].abs().to_numpy()
    assert (residual <= 0.01 * change + 1e-7).all(), (kind, (residual / change).max())
