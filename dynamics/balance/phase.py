"""Whether an ``optimizer.step()`` is running now.

The recorder's probe (and any other optimizer hook) runs the model's forward and backward *inside*
``optimizer.step()``. Those passes are not training passes: an intervention must neither log them as the step's
decisions nor modulate their gradients. torch runs the process-wide optimizer pre-hooks before every
optimizer's own hooks and the process-wide post-hooks after them, so a depth counter kept by one such pair
brackets everything a step does. The set of optimizers whose step is running is kept (not a counter), so a
step that raised is forgotten at that optimizer's next step. The pair is installed while at least one user
holds it (``acquire`` / ``release``) and costs two Python calls per optimizer step.
"""
from __future__ import annotations

from typing import Any

from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

_stepping: set[int] = set()  # id() of each optimizer whose step() is running
_state = {"users": 0}
_handles: list[Any] = []


def _enter(optimizer, args, kwargs) -> None:
    _stepping.add(id(optimizer))


def _leave(optimizer, args, kwargs) -> None:
    _stepping.discard(id(optimizer))


def inside_step() -> bool:
    """True while some optimizer's ``step()`` (its hooks included) is running."""
    return bool(_stepping)


def acquire() -> None:
    """One more user of the tracker; the first installs the process-wide hooks."""
    if _state["users"] == 0:
        _handles.extend([register_optimizer_step_pre_hook(_enter), register_optimizer_step_post_hook(_leave)])
    _state["users"] += 1


def release() -> None:
    """One user fewer; the last removes the hooks. Extra calls are ignored."""
    if _state["users"] == 0:
        return
    _state["users"] -= 1
    if _state["users"] == 0:
        for handle in _handles:
            handle.remove()
        _handles.clear()
        _stepping.clear()
