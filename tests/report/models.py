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
