"""The small models the report tests record runs of (one place, so that the tests share them)."""
from __future__ import annotations

import torch


class TwoView(torch.nn.Module):
    """Two linear views and a linear head."""

    def __init__(self):
        super().__init__()
        self.cc, self.mlo = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.cc(a), self.mlo(b)], dim=1))[:, 0]


class Columns(torch.nn.Module):
    """``n`` small MLP columns (one per view) and a linear head."""

    def __init__(self, n: int):
        super().__init__()
        self.cols = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(),
                                                            torch.nn.Linear(5, 3)) for _ in range(n))
        self.head = torch.nn.Linear(3 * n, 1)

    def forward(self, xs):
        return self.head(torch.cat([c(x) for c, x in zip(self.cols, xs)], dim=1))[:, 0]


def record_two_view(out, condition, seed, *, steps, flush_every, scale=2.0, log_loss=False, manual_grad_steps=0):
    """An open recorder over a :class:`TwoView` run of ``steps`` SGD steps on one fixed batch (``scale``: how much
    larger the cc inputs are); the first ``manual_grad_steps`` set their gradients by hand (no backward pass)."""
    import dynamics

    torch.manual_seed(seed)
    model = TwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a, b = torch.randn(8, 3) * scale, torch.randn(8, 3)
    y = (a[:, 0] > 0).float()
    rec = dynamics.attach(model, opt, views={"cc": model.cc, "mlo": model.mlo}, out=out, condition=condition,
                          seed=seed, flush_every=flush_every)
    for step in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(a, b), y)
        if step < manual_grad_steps:  # gradients set by hand: the recorder sees no backward pass
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.01)
        else:
            loss.backward()
        if log_loss:
            rec.log(loss=loss.detach())
        opt.step()
    return rec
