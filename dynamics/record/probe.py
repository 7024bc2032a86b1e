"""Loss-change allocation that adds up: path-integrated lca on a fixed probe batch.

First-order lca uses g(θ_t)·Δθ. On a fixed probe batch the loss change along the straight path from θ_t to
θ_{t+1} is exactly ∫₀¹ g(θ_t + sΔθ)·Δθ ds; the trapezoid rule ½(g₀+g₁)·Δθ and Simpson's rule
(g₀ + 4g_½ + g₁)/6·Δθ approximate that integral per tensor, and ``actual − Σ lca`` is each rule's residual
(Lan et al., NeurIPS 2019). The probe never changes training: parameters are put back bit for bit, the
parameters' ``.grad`` are not touched (``autograd.grad``), module buffers (BatchNorm running statistics) are
restored, and the random number generators (torch's and every ``generator`` a module of the model holds)
are forked so the training streams continue unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..schema import BUILTIN_TABLES, PROBE, RULES
from . import frames, registry
from .quantity import Binding, Flushed, Frames, Quantity, RecordedStep

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


def user_generators(model: nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects the model's modules draw from (a module's ``generator`` attribute, as
    ``dynamics.balance.ModalityDropout`` holds one), each once: torch's fork does not cover them."""
    found = {id(g): g for m in model.modules() if isinstance(g := getattr(m, "generator", None), torch.Generator)}
    return list(found.values())


@contextlib.contextmanager
def preserved(model: nn.Module, train_mode: bool) -> Iterator[None]:
    """Run probe evaluations without leaving a trace: modes, buffers and RNG streams (torch's default ones
    and the modules' own generators) are restored."""
    modes = [m.training for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({b.device.index for b, _ in buffers if b.device.type == "cuda"} |
                     {p.device.index for p in model.parameters() if p.device.type == "cuda"})
    generators = [(g, g.get_state()) for g in user_generators(model)]
    try:
        with torch.random.fork_rng(devices=devices), registry.own_pass():  # no intervention acts on it
            model.train(train_mode)
            yield
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode
        for generator, state in generators:
            generator.set_state(state)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def loss_and_grads(model: nn.Module, probe: ProbeBatch, params: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L and ∂L/∂θ for each tensor on the probe batch at the current parameters (zeros where unused)."""
    torch.manual_seed(PROBE_SEED)
    for generator in user_generators(model):  # the same draws at every point of the path (put back after)
        generator.manual_seed(PROBE_SEED)
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


class ProbePart(Quantity):
    """The probe as a recorded quantity: on every ``every``-th step, L and g on the probe batch at θ_t (before
    the step), at θ_{t+1} and at the midpoint (after it), and per tensor each rule's lca against Δθ. Owns its
    buffers: per row the lca of each rule ``[rules, tensors]`` and the losses before and after ``[2]``."""

    tables = (BUILTIN_TABLES[PROBE],)

    def __init__(self, probe: ProbeBatch, every: int = 50) -> None:
        if not isinstance(probe, ProbeBatch):
            raise TypeError(f"probe must be a dynamics.ProbeBatch, got {type(probe).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probe_every must be a positive int, got {every!r}")
        self._probe, self._every = probe, every
        self._grads: list[list[torch.Tensor]] | None = None  # g_0, then g_½ and g_1, of the step being probed

    def check(self, model: nn.Module) -> None:
        check(model, self._probe)

    def bind(self, binding: Binding) -> None:
        super().bind(binding)
        tensors = binding.tensors
        self._model, self._params, self._dots, self._guard = binding.model, tensors.params, binding.dots, \
            binding.guard
        self._lca = tensors.buffer(binding.rows, len(RULES), tensors.n)
        self._loss = tensors.buffer(binding.rows, 2)

    def needs(self, step: int) -> bool:
        return step % self._every == 0

    def describe(self) -> Mapping[str, Any]:
        return {"probe": {"every": self._every, "train_mode": self._probe.train_mode, "rules": list(RULES)}}

    def on_step_start(self, step: RecordedStep) -> None:
        self._grads = None
        if step.index % self._every:
            return
        with self._guard.quietly(), preserved(self._model, self._probe.train_mode):
            loss, g0 = loss_and_grads(self._model, self._probe, self._params)
        self._loss[step.row][0].copy_(loss)
        self._grads = [g0]

    def on_update(self, step: RecordedStep) -> None:
        """Probe gradients at θ_{t+1} and at the midpoint (parameters put back bit for bit afterwards)."""
        if self._grads is None:
            return
        params = self._params
        with self._guard.quietly(), preserved(self._model, self._probe.train_mode):
            loss, g1 = loss_and_grads(self._model, self._probe, params)
            self._loss[step.row][1].copy_(loss)
            after = [p.detach().clone() for p in params]
            try:
                for p, start, end in zip(params, step.theta_t, after):
                    p.copy_(torch.lerp(start, end.to(start.dtype), 0.5))
                _, g_half = loss_and_grads(self._model, self._probe, params)
            finally:
                for p, end in zip(params, after):
                    p.copy_(end)
        self._grads += [g_half, g1]

    def on_step_end(self, step: RecordedStep) -> None:
        if self._grads is None:
            return
        g0, g_half, g1 = self._grads
        self._grads = None
        ends = [self._dots(g, step.minus_delta).neg_() for g in (g0, g_half, g1)]
        self._lca[step.row].copy_(path_lca(*ends))

    def take(self, flushed: Flushed) -> Frames:
        n = len(flushed.steps)
        part, step_columns = frames.probe_frame(flushed.steps, self._lca.take(n), self._loss.take(n))
        return Frames({} if part is None else {PROBE: part}, step_columns)
