"""Preallocated device buffers: one row per recorded step, NaN where a step wrote nothing.

The hot path writes rows on the device (no host transfer); a flush takes the first ``n`` rows to the host in one
transfer and resets them to NaN for reuse.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class DeviceBuffer:
    """``rows × shape`` numbers on ``device``; ``buffer[row]`` is a view to write a step's values into."""

    def __init__(self, rows: int, *shape: int, device: torch.device, dtype: torch.dtype) -> None:
        self.data = torch.full((rows, *shape), math.nan, device=device, dtype=dtype)

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.data[row]

    def take(self, n: int) -> np.ndarray:
        """The first ``n`` rows on the host in float64 (one transfer), and those rows reset to NaN. Works in any
        grad mode of the caller: the rows are detached (a row written under autograd must not stop a flush)."""
        with torch.no_grad():
            values = self.data[:n].detach().to("cpu", torch.float64).numpy()
            self.data[:n].fill_(math.nan)
        return values
