"""What ``attribute=`` says, before any hook exists: the view context, per-row specs, and their validation.

``with dynamics.view("cc"):`` names the view of every attributed call inside it; ``dynamics.rows(fn, views)``
asks for per-row attribution of one stacked call; :func:`resolve_attribution` checks an ``attribute=`` mapping
against ``views=`` and adds each attributed module to the view spec under its group label ("cc+mlo").
:mod:`dynamics.record.attribution` does the splitting itself.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from .views import ViewSpec

_context = threading.local()


@contextlib.contextmanager
def view(name: str) -> Iterator[None]:
    """Attribute every call of an attributed module inside this block to view ``name``."""
    stack = _context.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def current_view() -> str | None:
    stack = getattr(_context, "stack", [])
    return stack[-1] if stack else None


def row_mask(rows_of_view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask over dim 0 of ``like``, broadcastable to it (built on the device, no host sync)."""
    if rows_of_view.dtype != torch.bool:
        index = rows_of_view.to(like.device)
        rows_of_view = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device).index_fill_(0, index, True)
    else:
        rows_of_view = rows_of_view.to(like.device)
    return rows_of_view.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class rows:  # noqa: N801 - reads as a spec: attribute={module: dynamics.rows(fn, views)}
    """Per-row attribution of one call on a stacked batch: ``fn(*inputs) -> {view: bool mask or indices}``."""

    fn: Callable[..., Mapping[str, torch.Tensor]]
    views: Sequence[str]


def views_of(how) -> list[str]:
    """The view names an attribute= value lists."""
    return list(how.views) if isinstance(how, rows) else list(how)


def group_label(how) -> str:
    """The group name of an attributed module's tensors in the unsplit table, e.g. 'cc+mlo'."""
    return "+".join(dict.fromkeys(views_of(how)))


def resolve_attribution(model: nn.Module, views: "ViewSpec", attribute: Mapping) -> tuple[dict, "ViewSpec"]:
    """Validate ``attribute=`` and add each attributed module to the view spec under its group label."""
    if not attribute:
        return {}, views
    resolved = {}
    for module, how in attribute.items():
        if isinstance(module, str):
            try:
                module = model.get_submodule(module)
            except AttributeError as exc:
                raise ValueError(f"attribute: the model has no submodule {module!r}") from exc
        if not isinstance(module, nn.Module):
            raise TypeError(f"attribute keys must be modules or their names, got {type(module).__name__}")
        names = views_of(how) if isinstance(how, (rows, list, tuple)) else None
        if not names or not all(isinstance(v, str) and v for v in names):
            raise ValueError(f"attribute: {type(module).__name__} needs a list of view names (call order) or "
                             f"dynamics.rows(fn, views), got {how!r}")
        resolved[module] = how
    if isinstance(views, Mapping):  # views given no module ({"cc": []}) own only their attributed parts
        spec = {v: t for v, t in views.items() if not (isinstance(t, (list, tuple)) and not t)}
    elif isinstance(views, Sequence) and not isinstance(views, str):
        spec = {}  # names only: they come back as the views of the attributed modules
    else:
        raise ValueError("attribute= needs views= as a dict or a list of view names, not a callable")
    declared = list(views)
    for module, how in resolved.items():
        unknown = [v for v in views_of(how) if v not in declared]
        if unknown:  # a misspelt view would become a new view and take the intended view's place
            raise ValueError(f"attribute=: {type(module).__name__} names view(s) {unknown} that are not in "
                             f"views= {declared}")
    labels: dict[str, list] = {}
    for module, how in resolved.items():
        labels.setdefault(group_label(how), []).append(module)
    for label, modules in labels.items():
        if label in spec:
            raise ValueError(f"view name {label!r} collides with the label of an attributed module")
        spec[label] = modules
    return resolved, spec
