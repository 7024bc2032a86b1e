"""The options of a recording, grouped and checked once at ``attach``: what to record when (RecordingOptions)
and which run it goes to (RunSpec). Bad values raise an error naming the option."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import schedules
from .probe import ProbeBatch


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class RecordingOptions:
    """When to record (``every``), how many recorded steps to buffer on the device (``flush_every``), the
    GradScaler whose scale to divide out (``scaler``), and the probe with its period."""

    every: schedules.Every = 1
    flush_every: int = 100
    scaler: Any = None
    probe: ProbeBatch | None = None
    probe_every: int = 50
    schedule: schedules.Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_positive_int("flush_every", self.flush_every)
        if self.scaler is not None and not hasattr(self.scaler, "is_enabled"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(self.scaler).__name__}")
        recorded = schedules.make_schedule(self.every)
        if self.probe is not None:
            if not isinstance(self.probe, ProbeBatch):
                raise TypeError(f"probe must be a dynamics.ProbeBatch, got {type(self.probe).__name__}")
            _check_positive_int("probe_every", self.probe_every)
            period = self.probe_every
            schedule = lambda step: recorded(step) or step % period == 0  # noqa: E731 - probe steps are recorded
        else:
            schedule = recorded
        object.__setattr__(self, "schedule", schedule)


@dataclass(frozen=True)
class RunSpec:
    """The run directory (``out``; ``resume`` appends to an existing run) and what its metadata says about
    the run: the user's ``config``, ``seed`` and ``condition``."""

    out: str | Path
    resume: bool = False
    config: Mapping | None = None
    seed: int | None = None
    condition: str | None = None
