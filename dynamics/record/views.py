"""Which parameter belongs to which view: resolution, validation and the coverage table.

A view spec is resolved once, at attach time, into a list of :class:`ParamInfo` (one per distinct trainable
tensor) plus the frozen parameters that were skipped. Every way a spec can be wrong raises a ``ValueError``
that names the offending view, module, pattern or parameter, before anything is recorded.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence, Union

import pandas as pd
import torch
from torch import nn

from ..schema import SHARED

ViewTarget = Union[nn.Module, str, "re.Pattern[str]", Sequence[Union[nn.Module, str, "re.Pattern[str]"]]]
ViewSpec = Union[Mapping[str, ViewTarget], Sequence[str], Callable[[str], "str | None"]]


@dataclass(frozen=True)
class ParamInfo:
    """One recorded parameter tensor. ``name`` is its first qualified name; ``aliases`` are the others (tied)."""

    index: int
    name: str
    view: str
    layer: str
    depth: int
    numel: int
    shape: tuple[int, ...]
    dtype: str
    aliases: tuple[str, ...] = ()

    def as_record(self) -> dict:
        record = asdict(self)
        record["shape"] = list(self.shape)
        record["aliases"] = list(self.aliases)
        return record


@dataclass(frozen=True)
class ViewAssignment:
    """The resolved spec: recorded parameters (in model order), their tensors, and what was left out."""

    params: list[ParamInfo]
    tensors: list[nn.Parameter]
    views: list[str]
    shared_name: str
    frozen: list[str]

    def coverage(self) -> pd.DataFrame:
        """Every parameter of the model with its view, layer, depth and numel; frozen ones are listed too."""
        rows = [
            {"param": p.name, "view": p.view, "layer": p.layer, "depth": p.depth, "numel": p.numel,
             "status": "recorded"}
            for p in self.params
        ]
        rows += [{"param": name, "view": None, "layer": _layer_of(name), "depth": None, "numel": None,
                  "status": "frozen"} for name in self.frozen]
        return pd.DataFrame(rows, columns=["param", "view", "layer", "depth", "numel", "status"])


def _layer_of(param_name: str) -> str:
    """Qualified name of the module that owns a parameter ('' for parameters of the root module)."""
    return param_name.rpartition(".")[0]


def _distinct_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, tuple[str, ...]]]:
    """(first name, tensor, other names) per distinct tensor, in model order."""
    names_by_id: dict[int, list[str]] = {}
    tensor_by_id: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(p), []).append(name)
        tensor_by_id[id(p)] = p
    return [(names[0], tensor_by_id[i], tuple(names[1:])) for i, names in names_by_id.items()]


def _as_list(target: ViewTarget) -> list:
    if isinstance(target, (nn.Module, str, re.Pattern)):
        return [target]
    if isinstance(target, Iterable):
        return list(target)
    raise TypeError(f"a view target must be a module, a glob string, a compiled regex or a list of them, "
                    f"got {type(target).__name__}")


def _matching_names(view: str, target, all_names: Iterable[str],
                    module_names: Mapping[int, str]) -> set[str]:
    """Every parameter name (aliases included) that one target of a view claims."""
    if isinstance(target, nn.Module):
        prefix = module_names.get(id(target))
        if prefix is None:
            raise ValueError(f"view {view!r}: module {type(target).__name__} is not part of the model")
        return {n for n in all_names if prefix == "" or n.startswith(prefix + ".")}
    if isinstance(target, re.Pattern):
        return {n for n in all_names if target.search(n)}
    if isinstance(target, str):
        return {n for n in all_names if fnmatch.fnmatchcase(n, target)}
    raise TypeError(f"view {view!r}: cannot match parameters with a {type(target).__name__}")


def _describe(target) -> str:
    if isinstance(target, nn.Module):
        return f"module {type(target).__name__}"
    if isinstance(target, re.Pattern):
        return f"regex {target.pattern!r}"
    return f"pattern {target!r}"


def resolve_views(model: nn.Module, views: ViewSpec, *, shared_name: str = SHARED,
                  extra_views: Sequence[str] = ()) -> ViewAssignment:
    """Assign every trainable parameter of ``model`` to one view; parameters in none go to ``shared_name``.

    ``views`` is a dict name → module / glob / compiled regex (or a list of them), a callable from parameter
    name to view name (``None`` → shared), or a plain list of view names that own no parameters themselves
    (used with per-call attribution of a shared module). ``extra_views`` are view names declared elsewhere.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    distinct = _distinct_parameters(model)
    trainable = {name for name, p, _ in distinct if p.requires_grad}
    if callable(views) and not isinstance(views, (Mapping, nn.Module)):
        view_names, claimed = _claimed_by_function(views, distinct, trainable)
        if not view_names and not extra_views:
            raise ValueError("the view function assigned no trainable parameter to any view")
    elif isinstance(views, Mapping):
        view_names, claimed = [str(v) for v in views], _claimed_by_mapping(model, views, distinct, trainable)
    elif isinstance(views, Sequence) and not isinstance(views, str):
        view_names, claimed = [str(v) for v in views], {}
    else:
        raise TypeError(f"views must be a dict, a list of view names or a callable, got {type(views).__name__}")
    view_names += [v for v in extra_views if v not in view_names]
    _check_view_names(view_names, shared_name)
    return _assignment(distinct, trainable, claimed, view_names, shared_name)


_CALLABLE_VIEWS = ("views= is a callable, so it maps each parameter name to its view: views(name: str) -> str | None "
                   "(None: the shared group)")
_FUNCTION_OF_MODEL = ("For a function of the model that returns the views (lambda m: {'cc': m.model.cc, ...}), call "
                      "it yourself (views=f(model)), or give it to a trainer's callback as views_of=f "
                      "(dynamics.integrations.lightning.DynamicsCallback(out, views_of=f))")


def _claimed_by_function(views: Callable, distinct: list, trainable: set[str]) -> tuple[list[str], dict[str, str]]:
    """View names in order of first use, and parameter name → view, from a function of the parameter name."""
    view_names: list[str] = []
    claimed: dict[str, str] = {}
    for name, p, aliases in distinct:
        if name not in trainable:
            continue
        try:
            view = views(name)
        except Exception as exc:  # noqa: BLE001 - most often a function of the model given as views=
            raise TypeError(f"{_CALLABLE_VIEWS}; called with the parameter name {name!r} it raised "
                            f"{type(exc).__name__}: {exc}. {_FUNCTION_OF_MODEL}") from exc
        if view is None:
            continue
        if isinstance(view, (Mapping, nn.Module, list, tuple)):
            raise ValueError(f"{_CALLABLE_VIEWS}; it returned a {type(view).__name__} for parameter {name!r}. "
                             f"{_FUNCTION_OF_MODEL}")
        if not isinstance(view, str) or not view:
            raise ValueError(f"view function returned {view!r} for parameter {name!r}; expected a view "
                             f"name or None")
        claimed[name] = view
        if view not in view_names:
            view_names.append(view)
    return view_names, claimed


def _claimed_by_mapping(model: nn.Module, views: Mapping, distinct: list, trainable: set[str]) -> dict[str, str]:
    """Parameter name → view from a dict of modules, globs and regexes; each must match a trainable parameter
    and no parameter may be claimed by two views."""
    alias_to_first = {n: name for name, _, aliases in distinct for n in (name, *aliases)}
    all_names = list(alias_to_first)
    module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    claimed: dict[str, str] = {}
    for view, target in views.items():
        if not isinstance(view, str) or not view:
            raise ValueError(f"view names must be non-empty strings, got {view!r}")
        for item in _as_list(target):
            hits = {alias_to_first[n] for n in _matching_names(view, item, all_names, module_names)}
            live = hits & trainable
            if not live:
                detail = (" (all of its parameters are frozen)" if hits
                          else _suggestion(item, trainable, alias_to_first))
                raise ValueError(f"view {view!r}: {_describe(item)} matches no trainable parameter{detail}")
            for name in live:
                other = claimed.get(name)
                if other is not None and other != view:
                    raise ValueError(f"parameter {name!r} is claimed by two views: {other!r} and {view!r}; "
                                     f"for one module used by several views, attribute its calls instead")
                claimed[name] = view
    return claimed


def _suggestion(target, trainable: set[str], alias_to_first: Mapping[str, str]) -> str:
    """For a glob string that matched nothing: the closest module and parameter names (difflib), and how a
    string is read; '' for anything else."""
    if not isinstance(target, str):
        return ""
    params = [n for n, first in alias_to_first.items() if first in trainable]
    modules = sorted({p.rsplit(".", k)[0] for p in params for k in range(1, p.count(".") + 1)})  # owning ones
    if target in modules:  # a module's name alone matches no parameter name
        return (f"; did you mean {target + '.*'!r}? (a string is read as a glob (fnmatch) over parameter names: "
                f"{target + '.*'!r} matches the module's parameters)")
    close = difflib.get_close_matches(target, [*modules, *params], n=3, cutoff=0.6)
    how = "a string is read as a glob (fnmatch) over parameter names"
    if not close:
        return f" ({how}: 'module.*' matches a module's parameters)"
    guess = ", ".join(repr(c) for c in close)
    if close[0] in modules:
        return f"; did you mean {guess}? ({how}: {close[0] + '.*'!r} matches a module's parameters)"
    return f"; did you mean {guess}? ({how})"


def _check_view_names(view_names: list[str], shared_name: str) -> None:
    if not view_names:
        raise ValueError("at least one view is needed")
    if len(set(view_names)) != len(view_names):
        raise ValueError(f"view names must be unique, got {view_names}")
    if shared_name in view_names:
        raise ValueError(f"view name {shared_name!r} is reserved for parameters in no view; pass shared_name= "
                         f"to use another name for that group")


def _assignment(distinct: list, trainable: set[str], claimed: dict[str, str], view_names: list[str],
                shared_name: str) -> ViewAssignment:
    """The parameter table: each trainable tensor with its view, layer and depth (layer index in its view)."""
    params: list[ParamInfo] = []
    tensors: list[nn.Parameter] = []
    depth_of_layer: dict[tuple[str, str], int] = {}
    layers_in_view: dict[str, int] = {}
    for name, p, aliases in distinct:
        if name not in trainable:
            continue
        view = claimed.get(name, shared_name)
        layer = _layer_of(name)
        key = (view, layer)
        if key not in depth_of_layer:
            depth_of_layer[key] = layers_in_view.get(view, 0)
            layers_in_view[view] = depth_of_layer[key] + 1
        params.append(ParamInfo(index=len(params), name=name, view=view, layer=layer, depth=depth_of_layer[key],
                                numel=p.numel(), shape=tuple(p.shape), dtype=str(p.dtype).removeprefix("torch."),
                                aliases=aliases))
        tensors.append(p)
    if not params:
        raise ValueError("the model has no trainable parameter to record")
    frozen = [name for name, p, _ in distinct if not p.requires_grad]
    groups = view_names + ([shared_name] if any(p.view == shared_name for p in params) else [])
    return ViewAssignment(params=params, tensors=tensors, views=groups, shared_name=shared_name, frozen=frozen)


def device_of(tensors: Sequence[torch.Tensor]) -> torch.device:
    """The single device all recorded tensors live on; several devices are not supported yet (said loudly)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"recorded parameters live on several devices {sorted(map(str, devices))}; "
                         f"model-parallel recording is not supported yet")
    return devices.pop()
