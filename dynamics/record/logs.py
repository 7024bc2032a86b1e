"""Scalars the user logs per step (``rec.log(loss=loss)``), kept on the device until a flush.

Tensors stay where they are (no host transfer in the training loop); a flush reads all of them in one transfer.
Several values for one step (micro-batches) are averaged.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from ..schema import LR_PREFIX, RESERVED_SCALARS

MAX_PENDING = 10_000  # logged values held before a flush is forced


def checked(scalars: Mapping[str, object]) -> dict[str, float | torch.Tensor]:
    """The scalars as floats or detached 0-d tensors; a bad name or value raises an error naming it."""
    out = {}
    for name, value in scalars.items():
        if name in RESERVED_SCALARS or name.startswith(LR_PREFIX):
            raise ValueError(f"log(): scalar name {name!r} is reserved; choose another name")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"log(): scalar {name!r} has {value.numel()} elements; pass one value")
            value = value.detach().reshape(())
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ValueError(f"log(): scalar {name!r} must be a number or a one-element tensor, "
                             f"got {type(value).__name__}")
        out[name] = value
    return out


class ScalarLog:
    """The logged values of the steps since the last flush.

    A flush may hold back the current step (it can still receive values), so that each step's scalars reach
    the store in one part, as one mean. When log() forces a flush because too much is pending, the values
    held back are summed on the device first (a sum and a count per scalar), so memory stays bounded.
    """

    def __init__(self) -> None:
        self._values: dict[int, dict[str, list]] = {}
        self._reduced: dict[tuple[int, str], int] = {}  # (step, name) -> how many values its one sum holds
        self._n = 0

    @property
    def full(self) -> bool:
        return self._n >= MAX_PENDING

    def add(self, step: int, scalars: Mapping[str, float | torch.Tensor]) -> None:
        for name, value in scalars.items():
            self._values.setdefault(step, {}).setdefault(name, []).append(value)
            self._n += 1

    def take(self, keep: int | None = None) -> dict[int, dict[str, float]]:
        """Per step, each scalar's mean over its values (tensors read in one transfer); every step but
        ``keep`` is removed from the log."""
        taken = {step: names for step, names in self._values.items() if step != keep}
        held = self._values.get(keep)
        tensors = [v for names in taken.values() for vs in names.values() for v in vs
                   if isinstance(v, torch.Tensor)]
        host = iter(())
        if tensors:
            with torch.no_grad():  # whatever the caller's grad mode
                host = iter(torch.stack([t.detach().to(torch.float64) for t in tensors]).cpu().tolist())
        out = {step: {name: math.fsum(next(host) if isinstance(v, torch.Tensor) else v for v in vs)
                      / self._count(step, name, vs) for name, vs in names.items()}
               for step, names in taken.items()}
        self._reduced = {key: n for key, n in self._reduced.items() if key[0] == keep}
        self._values = {} if held is None else {keep: held}
        if held is not None and self.full:
            self._sum_held(keep, held)
        self._n = 0 if held is None else sum(map(len, held.values()))
        return out

    def _count(self, step: int, name: str, values: list) -> int:
        """How many logged values ``values`` stand for (a held-back sum counts all it holds)."""
        return len(values) - 1 + self._reduced[step, name] if (step, name) in self._reduced else len(values)

    def _sum_held(self, step: int, held: dict[str, list]) -> None:
        """Each held-back scalar's values as one sum on the device (no host transfer)."""
        with torch.no_grad():
            for name, vs in held.items():
                self._reduced[step, name] = self._count(step, name, vs)
                tensors = [v.detach().to(torch.float64) for v in vs if isinstance(v, torch.Tensor)]
                floats = sum(v for v in vs if not isinstance(v, torch.Tensor))
                held[name] = [torch.stack(tensors).sum() + floats if tensors else floats]


NOT_RECORDED = {"recorded": False, "skipped": False, "clip_factor": math.nan}  # a step with logs only
