"""Which recorders are attached now: so that a part of the user's model (an intervention, a second ``attach``)
can find the recorder of the model it sits in. Weak references only: a dropped recorder leaves no trace."""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

from torch import nn

_ACTIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_OWN_PASSES = {"depth": 0}  # > 0 while a recorder runs the model itself (the probe)


def register(recorder: Any) -> None:
    """Called by a recorder once its hooks are in place."""
    _ACTIVE.add(recorder)


def unregister(recorder: Any) -> None:
    """Called by a recorder when it closes; idempotent."""
    _ACTIVE.discard(recorder)


def active_for(module: nn.Module) -> Any | None:
    """The open recorder whose model is ``module`` or contains it, else None."""
    for recorder in list(_ACTIVE):
        model = recorder.model
        if model is module or any(m is module for m in model.modules()):
            return recorder
    return None


def conflicting(model: nn.Module, optimizer: Any) -> tuple[Any, str] | None:
    """An open recorder that already records ``model`` (or a module containing it, or one inside it) or
    ``optimizer``, and which of the two; None when there is none."""
    inside = set(map(id, model.modules()))
    for recorder in list(_ACTIVE):
        if recorder.optimizer is optimizer:
            return recorder, "optimizer"
        if id(recorder.model) in inside or any(m is model for m in recorder.model.modules()):
            return recorder, "model"
    return None


@contextlib.contextmanager
def own_pass() -> Iterator[None]:
    """Mark the model's passes a recorder runs itself (the probe's, at attach and at its steps): interventions
    leave them alone (:func:`in_own_pass`), so they draw no random number and change no state."""
    _OWN_PASSES["depth"] += 1
    try:
        yield
    finally:
        _OWN_PASSES["depth"] -= 1


def in_own_pass() -> bool:
    """Is a recorder running the model itself now?"""
    return _OWN_PASSES["depth"] > 0
