"""Which optimizer step is open: the step state machine and the hooks that notice backward passes.

A step opens with the first backward pass after the previous optimizer step and closes at the next optimizer
step. At the end of each backward pass every gradient's identity and version counter are noted; gradients reset,
replaced or changed in place afterwards with no optimizer step in between (the GradScaler skipped the step, or
the loop did) mean the open step was skipped: step indices count optimizer step attempts.
"""
from __future__ import annotations

import weakref
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import schedules
from .guard import HookGuard
from .quantity import RecordedTensors


def _never_compiled(hook: Callable) -> Callable:
    """A hook dynamo must not trace (it runs once per parameter per backward pass): its code is marked to be
    skipped, which costs nothing per call, where this torch offers that; else it is wrapped."""
    skip_code = getattr(getattr(torch._dynamo, "eval_frame", None), "skip_code", None)
    if skip_code is None:
        return torch.compiler.disable(hook)
    skip_code(hook.__code__)
    return hook


class StepTracker:
    """The index of the current optimizer step attempt, whether a backward pass of it has run (``open``), and
    the gradient snapshot that tells a skipped step from one whose gradient was clipped before the step."""

    def __init__(self, tensors: RecordedTensors, start_step: int, schedule: schedules.Schedule) -> None:
        self.step = start_step
        self.open = False          # a backward pass of this step has run, its optimizer step has not
        self.in_backward = False   # between the first gradient of a backward pass and its end
        self.in_step = False       # inside optimizer.step() (a closure's backward belongs to this step)
        self._tensors, self._schedule = tensors, schedule
        self._snapshot: list[tuple[weakref.ref, int] | None] = [None] * tensors.n

    @property
    def recording(self) -> bool:
        """Is the current step one the schedule records?"""
        return self._schedule(self.step)

    def backward_began(self) -> None:
        self.in_backward, self.open = True, True

    def backward_ended(self) -> None:
        """All gradients of this pass are accumulated: note each one's identity and version."""
        self.in_backward = False
        local = self._tensors.local
        self._snapshot = [None if (g := p.grad) is None else (weakref.ref(g), local(g)._version)
                          for p in self._tensors.params]

    def changed_since_backward(self) -> bool:
        """Were the gradients reset, replaced or modified in place since the last backward pass ended?"""
        local = self._tensors.local
        for p, snap in zip(self._tensors.params, self._snapshot):
            grad = p.grad
            if snap is None:
                if grad is not None:
                    return True
            elif grad is None or snap[0]() is not grad or local(grad)._version != snap[1]:
                return True
        return False

    def gradient_state(self) -> tuple[bool, bool]:
        """Has a backward pass of this step run, and did its gradient change since (clipping, unscaling)?
        DTensor gradients changed in place keep their version counters, so a sharded gradient counts as
        changed: the ratio of its two measurements is then exactly 1 where it was not."""
        return self.open, self.open and (self._tensors.layout.sharded or self.changed_since_backward())

    def unstepped(self) -> bool:
        """The open step's gradients were reset or changed without an optimizer step: it was skipped. Never
        inside a step: a closure that resets and recomputes the gradient (SAM-style) continues the step."""
        return self.open and not self.in_step and self.changed_since_backward()

    def has_grad(self) -> np.ndarray:
        """Which tensors had a gradient at the end of the last backward pass."""
        return np.array([s is not None for s in self._snapshot], bool)

    def advance(self) -> None:
        """The step is over (taken or skipped): the next one begins."""
        self.step += 1
        self.open = False


class BackwardHooks:
    """Notices every backward pass through the recorded tensors: ``began()`` runs at its first gradient,
    ``ended()`` once it is over, after the other end-of-pass callbacks (such as DistributedDataParallel's,
    which writes the averaged gradients)."""

    def __init__(self, guard: HookGuard, tracker: StepTracker, began: Callable[[], None],
                 ended: Callable[[], None]) -> None:
        self._guard, self._tracker, self._began = guard, tracker, began
        self._after_others = guard.wrap(self._queue_end)
        self._at_end = guard.wrap(ended)
        first = guard.wrap(self._first_grad)

        def hook(grad: torch.Tensor) -> None:
            if not tracker.in_backward and not guard.quiet_depth:
                first()
            return None
        self.grad_hook = _never_compiled(hook)

    def install(self, model: nn.Module, tensors: RecordedTensors) -> list:
        """The hooks' handles. Sharded parameters (FSDP computes gradients of unsharded copies): the first
        gradient of a pass is the model output's."""
        if tensors.layout.sharded:
            return [model.register_forward_hook(self._guard.wrap(self._hook_outputs, no_grad=False))]
        return [p.register_hook(self.grad_hook) for p in tensors.params]

    def _hook_outputs(self, module, args, output) -> None:
        if self._guard.quiet or not torch.is_grad_enabled():
            return
        for leaf in torch.utils._pytree.tree_leaves(output):
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                leaf.register_hook(self.grad_hook)

    def _first_grad(self) -> None:
        self._began()
        torch.autograd.Variable._execution_engine.queue_callback(self._after_others)

    def _queue_end(self) -> None:
        """Callbacks run in order and may queue more: queueing the end again puts it after those queued
        later in the pass."""
        torch.autograd.Variable._execution_engine.queue_callback(self._at_end)
