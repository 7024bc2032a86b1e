"""What every intervention returns: a handle that owns its hooks and logs its decisions into the run.

A handle is a context manager; ``remove()`` (or leaving the ``with`` block) removes every hook it made, after
which training is the training it would have been without it. Decisions go into the per-step table of the
recorder attached to the same model (found with ``dynamics.record.registry.active_for``) through its public
``log``; with no recorder attached nothing is logged and nothing else changes.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..record import registry
from . import phase
from .fusion import Branch, FusionInput, branch_parameters


class Intervention:
    """Base of the handles: hooks kept in one list, removed together; decisions logged to the run."""

    kind = "intervention"

    def __init__(self, anchor: nn.Module) -> None:
        self._anchor = anchor          # the module the recorder is looked up from
        self._handles: list[Any] = []
        self._removed = False
        self._warned = False
        phase.acquire()

    def _keep(self, handle: Any) -> None:
        self._handles.append(handle)

    @property
    def removed(self) -> bool:
        return self._removed

    def remove(self) -> None:
        """Remove every hook this intervention made. Safe to call twice."""
        if self._removed:
            return
        self._removed = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        phase.release()

    def __enter__(self) -> "Intervention":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()

    def _active(self) -> bool:
        """A training pass of the user's loop: not one run inside an optimizer step (by an optimizer hook) nor
        one the recorder runs itself (the probe's, also its check at attach)."""
        return not self._removed and not phase.inside_step() and not registry.in_own_pass()

    def _log(self, **scalars: float | torch.Tensor) -> None:
        """Into the attached recorder's per-step table, if there is one; its failure never reaches training."""
        rec = registry.active_for(self._anchor)
        if rec is not None:
            log_safely(rec, scalars, self._warn_once)

    def _warn_once(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"dynamics.balance ({self.kind}): {text}", RuntimeWarning, stacklevel=3)


class BranchIntervention(Intervention):
    """The frame of an intervention that acts at a fusion module on the views' branches, step by step of an
    optimizer (re-balancing, OGM-GE): the optimizer checked, each branch's parameters (``named``, view → (name,
    parameter)), the fusion input split by view (``_input``), the branches observed, and the optimizer steps
    counted (``step``, from 0 at attach) around the subclass's ``_pre_step`` and ``_post_step``."""

    def __init__(self, fusion: nn.Module, optimizer: torch.optim.Optimizer, branches: Mapping[str, Branch],
                 widths: Mapping[str, int] | Sequence[int] | None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.named = branch_parameters(branches)
        self.views = list(self.named)
        self._input = FusionInput(fusion, self.views, widths)
        super().__init__(fusion)
        for handle in self._input.observe(branches):
            self._keep(handle)
        self.step = 0
        self._keep(optimizer.register_step_pre_hook(self._on_pre_step))
        self._keep(optimizer.register_step_post_hook(self._on_post_step))

    def _on_pre_step(self, optimizer, args, kwargs) -> None:
        if not self._removed:
            self._pre_step()

    def _on_post_step(self, optimizer, args, kwargs) -> None:
        if not self._removed:
            self._post_step()
            self.step += 1

    def _pre_step(self) -> None:
        """Before an optimizer step of the user's loop (the gradients are those the optimizer will use)."""

    def _post_step(self) -> None:
        """After it (``step`` is still the index of the step just taken)."""


def eager(hook: Callable) -> Callable:
    """A hook that always runs eagerly: where the user compiles the model, dynamo leaves it alone (its host-side
    state would break the graph and recompile at every change)."""
    return torch.compiler.disable(hook)


def log_safely(rec: Any, scalars: dict, warn: Callable[[str], None]) -> None:
    try:
        rec.log(**scalars)
    except (RuntimeError, ValueError) as exc:  # a closed recorder, a reserved name: the decision is not logged
        warn(f"could not log {sorted(scalars)}: {exc}")


def log_at_backward_end(outputs: list[torch.Tensor], rec: Any, scalars: dict, warn: Callable[[str], None]) -> None:
    """Log ``scalars`` when the backward pass through ``outputs`` ends.

    A forward pass belongs to the step whose backward pass follows it, and the recorder's ``log`` files a
    value under the step whose backward pass has run. So the values are logged from a callback queued by a
    hook on the first output that needs a gradient; no backward pass through it, nothing logged.
    """
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            def hook(grad: torch.Tensor) -> None:
                torch.autograd.Variable._execution_engine.queue_callback(lambda: log_safely(rec, scalars, warn))
            out.register_hook(hook)
            return
