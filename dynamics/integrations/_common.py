"""What the trainer callbacks share: importing an optional package, view specs by module name, and the attach
options a callback passes through. (The torch optimizer inside a trainer's wrapper is found by ``attach``.)"""
from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any, Mapping

from torch import nn

__all__ = ["require", "views_by_module_name", "check_attach_options"]

# attach() parameters a callback decides itself (from the trainer), never taken from the user
_DECIDED = frozenset({"model", "optimizer", "views", "out", "scaler"})


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import an optional package, or fail with the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{needed_by} needs the {module.partition('.')[0]!r} package, which is not installed: "
                          f"pip install 'dynamics[{extra}]'") from exc


def _module_or_target(target: Any, modules: Mapping[str, nn.Module]) -> Any:
    if isinstance(target, str) and target and target in modules:
        return modules[target]
    if isinstance(target, (list, tuple)):
        return [_module_or_target(t, modules) for t in target]
    return target


def views_by_module_name(model: nn.Module, views: Any) -> Any:
    """A dict view spec in which a string naming a submodule of ``model`` (``"bert.encoder"``) stands for that
    module; other strings stay parameter-name globs (``"bert.encoder.*"``). Other specs are returned as given."""
    if not isinstance(views, Mapping):
        return views
    modules = dict(model.named_modules())
    return {view: _module_or_target(target, modules) for view, target in views.items()}


def check_attach_options(options: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The user's extra ``attach`` options, checked by name now (a typo fails when the callback is built, not
    at the start of training)."""
    from ..record import attach

    allowed = set(inspect.signature(attach).parameters) - _DECIDED
    unknown = sorted(set(options) - allowed)
    if unknown:
        decided = sorted(set(unknown) & _DECIDED)
        why = f" ({', '.join(decided)}: decided by {owner} from the trainer)" if decided else ""
        raise TypeError(f"{owner}: unknown option(s) {unknown}{why}; attach options are {sorted(allowed)}")
    return dict(options)
