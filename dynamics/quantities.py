"""Pure functions on lists of tensors: per-tensor squared norms and dot products, stacked on the device.

No hooks, no state and no host transfers: each returns one 1-D tensor on the tensors' device, ready to be
written into a recorder buffer row. Low-precision tensors are reduced in float32.
"""
from __future__ import annotations

from typing import Sequence

import torch

def reduce_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 if any input is float64 (so double-precision models keep their precision), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def sq_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖t‖² for every tensor, as one vector (one vectorised foreach reduction)."""
    return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=reduce_dtype(tensors))).square_()


def dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """a_i · b_i (all elements) for every pair, as one vector.

    There is no foreach sum, so this is one fused multiply-reduce per pair (``torch.vdot`` on flat views).
    """
    if len(a) != len(b):
        raise ValueError(f"dots needs lists of equal length, got {len(a)} and {len(b)}")
    dtype = reduce_dtype([*a, *b])
    return torch.stack([torch.vdot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)) for x, y in zip(a, b)])
