"""Loss-change allocation that adds up: path-integrated lca on a fixed probe batch.

First-order lca uses g(θ_t)·Δθ. On a fixed probe batch the loss change along the straight path from θ_t to
θ_{t+1} is exactly ∫₀¹ g(θ_t + sΔθ)·Δθ ds; the trapezoid rule ½(g₀+g₁)·Δθ and Simpson's rule
(g₀ + 4g_½ + g₁)/6·Δθ approximate that integral per tensor, and ``actual − Σ lca`` is each rule's residual
(Lan et al., NeurIPS 2019). The probe never changes training: parameters are put back bit for bit, the
parameters' ``.grad`` are not touched (``autograd.grad``), module buffers (BatchNorm running statistics) are
restored, and the random number generators are forked so the training stream continues unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

PROBE_SEED = 20200306  # the same dropout masks at every point of the path, so L(θ) is one function


@dataclass(frozen=True)
class ProbeBatch:
    """A fixed batch: ``loss_fn(model(*inputs), targets)`` (a dict of inputs is passed as keyword arguments,
    a single tensor as the only argument). ``train_mode`` evaluates in training mode (batch statistics, fixed
    dropout masks); otherwise in eval mode."""

    inputs: Any
    targets: Any
    loss_fn: Callable[[Any, Any], torch.Tensor]
    train_mode: bool = True

    def loss(self, model: nn.Module) -> torch.Tensor:
        if isinstance(self.inputs, dict):
            out = model(**self.inputs)
        elif isinstance(self.inputs, (tuple, list)):
            out = model(*self.inputs)
        else:
            out = model(self.inputs)
        loss = self.loss_fn(out, self.targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("ProbeBatch.loss_fn must return a one-element loss tensor")
        return loss.reshape(())


@contextlib.contextmanager
def preserved(model: nn.Module, train_mode: bool) -> Iterator[None]:
    """Run probe evaluations without leaving a trace: modes, buffers and RNG streams are restored."""
    modes = [m.training for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({b.device.index for b, _ in buffers if b.device.type == "cuda"} |
                     {p.device.index for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            model.train(train_mode)
            yield
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def loss_and_grads(model: nn.Module, probe: ProbeBatch, params: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L and ∂L/∂θ for each tensor on the probe batch at the current parameters (zeros where unused)."""
    torch.manual_seed(PROBE_SEED)
    with torch.enable_grad():
        loss = probe.loss(model)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def check(model: nn.Module, probe: ProbeBatch) -> None:
    """Evaluate the probe loss once (leaving no trace), so a bad probe fails at attach, not mid-training."""
    try:
        with preserved(model, probe.train_mode), torch.no_grad():
            loss = probe.loss(model)
    except Exception as exc:
        raise ValueError(f"probe: loss_fn(model(inputs), targets) failed on the probe batch: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not torch.isfinite(loss).all():
        raise ValueError("probe: the loss on the probe batch is not finite")


def path_lca(g0: torch.Tensor, g_half: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    """Per-tensor lca by each rule from the three gradient·Δθ dot products (rows: first, trapezoid, Simpson)."""
    return torch.stack([g0, (g0 + g1) / 2, (g0 + 4 * g_half + g1) / 6])
