"""A tiny two-view model for the intervention tests: one branch per view, a linear fusion head."""
from __future__ import annotations

import torch
from torch import nn


class TinyTwoView(nn.Module):
    """Branches a (5 → 4) and b (3 → 2 wide: unequal widths), a linear head on the concatenation."""

    def __init__(self, classes: int = 3, width_b: int = 2) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
        self.b = nn.Sequential(nn.Linear(3, width_b), nn.Tanh())
        self.head = nn.Linear(4 + width_b, classes)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(xa), self.b(xb)], dim=1))


def batch(g: torch.Generator, n: int = 16, classes: int = 3):
    return torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g), torch.randint(0, classes, (n,), generator=g)


def hook_count(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Every hook on the model's modules and parameters and on the optimizer."""
    n = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    n += sum(len(p._backward_hooks or {}) for p in model.parameters())
    return n + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)
