"""Per-call attribution under activation checkpointing (``torch.utils.checkpoint``): exact, or refused.

A checkpoint runs a function's forward pass, drops its activations and runs it again in backward. For the
views' parts of a shared module's gradient that matters in two ways:

* **non-reentrant** (``use_reentrant=False``): the first forward pass builds the graph the gradient flows
  through (the module's call is attributed as usual); the recomputation in backward only rebuilds saved
  tensors. Its calls are therefore *not* attributed again (nor counted as calls that matched no view).
* **reentrant** (``use_reentrant=True``, ``checkpoint_sequential``'s default): the first pass runs without
  autograd, and the gradient flows through the recomputation, which backward runs in reverse order of the
  calls. A call without autograd during a forward pass is therefore given its view (call order, or
  ``dynamics.view``) and remembered by its input tensor (storage, shape, strides, dtype: the checkpoint hands
  its recomputation the same storage, detached); the recomputation is matched to it and attributed to that
  view. A recomputed call that matches nothing (the module's input was computed inside the checkpointed
  function) cannot be given a view: recording stops with an error saying so, rather than guessing.

``checkpoint_sequential`` calls the children of an ``nn.Sequential`` one by one, never the Sequential itself:
an attributed Sequential whose children run outside its own call under a checkpoint is refused the same way
(attribute its blocks instead). Per-row attribution (``dynamics.rows``) of a recomputed call is refused.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

_MISSING = object()


def in_backward() -> bool:
    """True while autograd runs a backward pass on this thread (a checkpoint's recomputation runs there)."""
    return torch._C._current_graph_task_id() != -1


def input_key(args: tuple, kwargs: Mapping[str, Any]) -> tuple | None:
    """The identity of a call's first tensor input: its storage, shape, strides and dtype (host metadata only,
    no device synchronisation)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return (value.data_ptr(), tuple(value.shape), tuple(value.stride()), value.dtype, value.device)
    return None


class DeferredCalls:
    """Calls made without autograd in a forward pass, by module and input, with the view each was given."""

    def __init__(self, limit: int = 4096) -> None:
        self._calls: dict[tuple, str | None] = {}
        self._limit = limit  # an evaluation loop without autograd must not grow it without bound

    def clear(self) -> None:
        self._calls.clear()

    def note(self, target: int, args: tuple, kwargs: Mapping[str, Any], view: str | None) -> None:
        key = input_key(args, kwargs)
        if key is not None:
            if len(self._calls) >= self._limit:
                self._calls.pop(next(iter(self._calls)))
            self._calls[(target, key)] = view

    def match(self, target: int, args: tuple, kwargs: Mapping[str, Any]) -> tuple[bool, str | None]:
        """(found, view) for a recomputed call; a match is used once."""
        key = input_key(args, kwargs)
        view = self._calls.pop((target, key), _MISSING) if key is not None else _MISSING
        return (False, None) if view is _MISSING else (True, view)


def unmatched(name: str) -> str:
    return (f"attribute=: module {name!r} was recomputed by a reentrant activation checkpoint "
            f"(torch.utils.checkpoint with use_reentrant=True, or checkpoint_sequential) from an input computed "
            f"inside the checkpointed function, so its call cannot be matched to a view: checkpoint the module "
            f"itself (checkpoint(module, x)), or use use_reentrant=False")


def rows_refused(name: str) -> str:
    return (f"attribute=: module {name!r} uses dynamics.rows and was recomputed by a reentrant activation "
            f"checkpoint: per-row attribution inside a recomputation is not supported; use use_reentrant=False")


def bypassed(name: str) -> str:
    return (f"attribute=: the children of the nn.Sequential {name!r} ran outside its own call under an "
            f"activation checkpoint (as torch.utils.checkpoint.checkpoint_sequential calls them): attribute its "
            f"blocks instead of the Sequential")
