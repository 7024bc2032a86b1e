"""The recorder's failure policy, and what it tells the reader of a run.

Every hook and autograd callback that dynamics runs inside the user's training step is built by
:meth:`HookGuard.wrap`: a failure there never reaches the training loop; it stops recording, warns, and is
written to ``meta.json["errors"]`` at close. A wrapped hook always runs eagerly (dynamo never traces it: its
host-side bookkeeping would break the graph and recompile every step). :class:`Notes` collects the remarks a
reader of the run must know (``meta.json["notes"]``), each with the steps it concerns.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch

MAX_NOTED_STEPS = 100  # steps kept per note


class HookGuard:
    """Runs hooks so that no error of the recorder reaches training, and keeps the recorder's own autograd
    (the probe, per-row attribution) out of its hooks. ``where`` gives the step a failure is reported at."""

    def __init__(self, where: Callable[[], int]) -> None:
        self.failure: str | None = None
        self.closed = False
        self._where = where
        self.quiet_depth = 0  # > 0 while the recorder runs autograd itself (read per gradient: no property)

    @property
    def quiet(self) -> bool:
        """True while the recorder itself runs autograd: its hooks then stay out of the way."""
        return self.quiet_depth > 0

    @contextlib.contextmanager
    def quietly(self) -> Iterator[None]:
        self.quiet_depth += 1
        try:
            yield
        finally:
            self.quiet_depth -= 1

    def wrap(self, hook: Callable, *, no_grad: bool = True, returns: bool = False, always: bool = False) -> Callable:
        """``hook`` made safe to run inside training: it does nothing once recording stopped or closed (unless
        ``always``: it puts something back), runs without autograd unless ``no_grad=False``, and a failure is
        reported, not raised. Its result is passed on only with ``returns=True`` (a hook's return value can
        replace a gradient or an output)."""
        def guarded(*args, **kwargs):
            if (self.failure is not None or self.closed) and not always:
                return None
            try:
                if no_grad and torch.is_grad_enabled():  # entering no_grad costs more than most hooks' work
                    with torch.no_grad():
                        result = hook(*args, **kwargs)
                else:  # (gradient hooks mostly run with autograd off already)
                    result = hook(*args, **kwargs)
                return result if returns else None
            except Exception as exc:  # noqa: BLE001 - reported, never swallowed silently
                if self.failure is None:
                    self.fail(exc)
            return None
        return torch.compiler.disable(guarded)

    def fail(self, exc: Exception) -> None:
        """Stop recording: the failure is warned about now and written to the run's errors at close."""
        self.failure = f"recording stopped at step {self._where()}: {type(exc).__name__}: {exc}"
        warnings.warn(f"dynamics: {self.failure}", RuntimeWarning, stacklevel=3)


class Notes:
    """Remarks for the reader of a run, each with (up to :data:`MAX_NOTED_STEPS` of) the steps it happened at.
    A note given with ``warn=True`` is also warned about, the first time it is made."""

    def __init__(self) -> None:
        self._steps: dict[str, list[int]] = {}

    def add(self, text: str, step: int, *, warn: bool = False) -> None:
        if warn and text not in self._steps:
            warnings.warn(f"dynamics: {text} (first at step {step}; noted in meta.json)", RuntimeWarning,
                          stacklevel=3)
        steps = self._steps.setdefault(text, [])
        if len(steps) < MAX_NOTED_STEPS:
            steps.append(step)

    def as_dict(self) -> dict[str, list[int]]:
        return {text: list(steps) for text, steps in self._steps.items()}
