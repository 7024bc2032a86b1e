"""When to record: schedules map an optimizer step index (from 0) to True/False.

Schedules are pure and cheap: an unrecorded step costs one call of one of these functions.
"""
from __future__ import annotations

import math
from typing import Callable, Union

Schedule = Callable[[int], bool]
Every = Union[int, str, Schedule]

LOG_STEPS_PER_DECADE = 32


def every_k(k: int) -> Schedule:
    """Steps 0, k, 2k, ..."""
    return lambda step: step % k == 0


def log_spaced(steps_per_decade: int = LOG_STEPS_PER_DECADE) -> Schedule:
    """Dense early, sparse late: step t is recorded when floor(n·log10(t+1)) increases (n per decade).

    Every step is recorded while steps are closer than 1/n decade apart (the first ~14 for n=32); then about
    n steps per decade, so a million-step run records about 6·n steps.
    """
    def scheduled(step: int) -> bool:
        if step == 0:
            return True
        return math.floor(steps_per_decade * math.log10(step + 1)) > math.floor(steps_per_decade * math.log10(step))
    return scheduled


def make_schedule(every: Every) -> Schedule:
    """Turn the ``every=`` argument of ``attach`` into a schedule, with a clear error for anything else."""
    if isinstance(every, bool):
        raise ValueError(f"every must be a positive int, 'log' or a callable, got {every!r}")
    if isinstance(every, int):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        return every_k(every)
    if isinstance(every, str):
        if every != "log":
            raise ValueError(f"every={every!r} is not a schedule; use an int, 'log' or a callable step -> bool")
        return log_spaced()
    if callable(every):
        return every
    raise ValueError(f"every must be a positive int, 'log' or a callable, got {type(every).__name__}")


def describe(every: Every) -> str:
    """A short text for the run metadata."""
    if isinstance(every, (int, str)):
        return str(every)
    return getattr(every, "__qualname__", type(every).__name__)
