"""What the trainer callbacks share: the life of one trainer run's recorder (:class:`RecorderSession`), importing
an optional package, view specs by module name, and the attach options a callback passes through. (The torch
optimizer inside a trainer's wrapper is found by ``attach``.) A new trainer's callback calls a session's
``start``, ``log`` and ``close`` from that trainer's own events and decides nothing else."""
from __future__ import annotations

import importlib
import inspect
import os
import warnings
from types import ModuleType
from typing import Any, Callable, Mapping

from torch import nn

__all__ = ["RecorderSession", "require", "views_by_module_name", "check_attach_options"]

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


class RecorderSession:
    """One trainer run's recorder from attach to close, the same for every trainer: attached on the writing
    process (a later run of the same callback resumes the run it began), the outcome agreed by every process
    (none trains on while the writer has stopped), scalars logged without ever stopping training (a bad name or
    value stops the logging, with a warning), closed with the error that ended the run (into ``meta.json``).
    ``recorder`` stays after close, for its ``run_dir``."""

    def __init__(self, out: str | os.PathLike, options: Mapping[str, Any], owner: str) -> None:
        self.out, self._owner = out, owner
        self._options = check_attach_options(options, owner)
        self.recorder = None
        self.open = self._opened_before = self._log_failed = False

    @property
    def options(self) -> Mapping[str, Any]:
        return self._options

    def start(self, model: nn.Module, optimizer: Any, views: Any, *, scaler: Any, writes: bool,
              agree: Callable[[str | None], str | None]) -> None:
        """Attach (on the process that ``writes``); ``agree(message)`` shares the writer's outcome (None: it
        attached) with every process and returns it. A run still open is closed first, as ended by an error."""
        from ..record import attach

        if self.open:
            self.close(RuntimeError("training began again before the last run ended (did it raise?)"))
        error = None
        if writes:
            options = dict(self._options)
            if self._opened_before:  # a second run of the callback continues the run it began
                options["resume"] = True
            try:
                self.recorder = attach(model, optimizer, views, out=self.out, scaler=scaler, **options)
                self.open = self._opened_before = True
                self._log_failed = False
            except Exception as exc:  # told to the other processes first, so none trains on without it
                error = exc
        message = agree(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f"dynamics: the writing process could not attach the recorder: {message}")

    def log(self, scalars: Mapping[str, Any]) -> None:
        """Log ``scalars`` into the open run; a failure stops the logging (warned once), never the training."""
        if not self.open or self._log_failed or not scalars:
            return
        try:
            self.recorder.log(**scalars)
        except (RuntimeError, ValueError) as exc:
            self._log_failed = True
            warnings.warn(f"dynamics: {self._owner}: scalars are no longer logged into the run: {exc}",
                          RuntimeWarning, stacklevel=3)

    def close(self, exception: BaseException | None = None) -> None:
        """Flush and close the recorder (an ``exception`` goes into ``meta.json``); safe to call twice."""
        if self.open:
            self.open = False
            self.recorder.__exit__(None if exception is None else type(exception), exception,
                                   None if exception is None else exception.__traceback__)
