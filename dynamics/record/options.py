"""The options of a recording, grouped and checked once at ``attach``: what to record when (RecordingOptions)
and which run it goes to (RunSpec). Bad values raise an error naming the option."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import schedules
from .measurements import StepMeasurements
from .quantity import Quantity


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class RecordingOptions:
    """When to record (``every``), how many recorded steps to buffer on the device (``flush_every``), the
    GradScaler whose scale to divide out (``scaler``), and the recorded quantities (the base measurements
    first, then the probe, attribution and the user's ``parts``). A step is recorded when ``every`` says so
    or a quantity ``needs`` it."""

    every: schedules.Every = 1
    flush_every: int = 100
    scaler: Any = None
    quantities: Sequence[Quantity] = ()
    schedule: schedules.Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_positive_int("flush_every", self.flush_every)
        if self.scaler is not None and not hasattr(self.scaler, "is_enabled"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(self.scaler).__name__}")
        _check_quantities(self.quantities)
        recorded = schedules.make_schedule(self.every)
        needs = [q.needs for q in self.quantities if type(q).needs is not Quantity.needs]
        schedule = (lambda step: recorded(step) or any(n(step) for n in needs)) if needs else recorded  # noqa: E731
        object.__setattr__(self, "schedule", schedule)


def _check_quantities(quantities: Sequence[Quantity]) -> None:
    """Quantities, each attached once, whose tables have names of their own."""
    tables = {spec.name: "the base measurements" for spec in StepMeasurements.tables}
    for quantity in quantities:
        if quantity._binding is not None:
            raise ValueError(f"{quantity.name} is attached to an open recorder: give each attach() its own")
        for spec in quantity.tables:
            if spec.name in tables:
                raise ValueError(f"{quantity.name} declares table {spec.name!r}, which {tables[spec.name]} "
                                 f"writes already")
            tables[spec.name] = quantity.name


@dataclass(frozen=True)
class RunSpec:
    """The run directory (``out``; ``resume`` appends to an existing run) and what its metadata says about
    the run: the user's ``config``, ``seed`` and ``condition``."""

    out: str | Path
    resume: bool = False
    config: Mapping | None = None
    seed: int | None = None
    condition: str | None = None
