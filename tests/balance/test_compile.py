"""Interventions on a compiled model: their hooks run eagerly, and the numbers are the eager model's."""
import copy

import torch
from torch import nn

from dynamics.balance import ogm_ge, rebalance
from tests.balance.common import TinyTwoView, batch


def test_compiled_model_trains_as_the_eager_one():
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    eager = TinyTwoView()
    twin = copy.deepcopy(eager)
    runs = []
    for model, compiled in ((eager, False), (twin, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        branches = {"a": model.a, "b": model.b}
        forward = torch.compile(model, backend="aot_eager") if compiled else model
        g = torch.Generator().manual_seed(1)
        with rebalance(model.head, opt, branches, threshold=0.0, steps=2) as rb, \
                ogm_ge(model.head, opt, branches, loss=criterion, alpha=1.0, noise=False) as ogm:
            coefs = []
            for _ in range(6):
                xa, xb, y = batch(g)
                criterion(forward(xa, xb), y).backward()
                coefs.append(ogm.coef.clone())
                opt.step()
                opt.zero_grad()
        runs.append(([p.detach().clone() for p in model.parameters()], rb.schedule, torch.stack(coefs)))
    (p_eager, s_eager, k_eager), (p_compiled, s_compiled, k_compiled) = runs
    assert s_eager == s_compiled and len(s_eager) > 0
    torch.testing.assert_close(k_compiled, k_eager, rtol=1e-6, atol=0)
    for p, q in zip(p_eager, p_compiled):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
