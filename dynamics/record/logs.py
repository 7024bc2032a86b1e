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
    """The logged values of the steps since the last flush."""

    def __init__(self) -> None:
        self._values: dict[int, dict[str, list]] = {}
        self._n = 0

    @property
    def full(self) -> bool:
        return self._n >= MAX_PENDING

    def add(self, step: int, scalars: Mapping[str, float | torch.Tensor]) -> None:
        for name, value in scalars.items():
            self._values.setdefault(step, {}).setdefault(name, []).append(value)
            self._n += 1

    def take(self) -> dict[int, dict[str, float]]:
        """Per step, each scalar's mean over its values (tensors read in one transfer); the log is emptied."""
        tensors = [v for names in self._values.values() for vs in names.values() for v in vs
                   if isinstance(v, torch.Tensor)]
        host = iter(())
        if tensors:
            with torch.no_grad():  # whatever the caller's grad mode
                host = iter(torch.stack([t.detach().to(torch.float64) for t in tensors]).cpu().tolist())
        out = {step: {name: float(np.mean([next(host) if isinstance(v, torch.Tensor) else v for v in vs]))
                      for name, vs in names.items()}
               for step, names in self._values.items()}
        self._values, self._n = {}, 0
        return out


NOT_RECORDED = {"recorded": False, "skipped": False, "clip_factor": math.nan}  # a step with logs only
