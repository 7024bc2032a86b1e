"""What every intervention returns: a handle that owns its hooks and logs its decisions into the run.

A handle is a context manager; ``remove()`` (or leaving the ``with`` block) removes every hook it made, after
which training is the training it would have been without it. Decisions go into the per-step table of the
recorder attached to the same model (found with ``dynamics.record.registry.active_for``) through its public
``log``; with no recorder attached nothing is logged and nothing else changes.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..record import registry
from . import phase


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
