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


def sq_norms(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """‖t‖² for every tensor, as one vector (one vectorised foreach reduction), in ``dtype`` (by default the
    :func:`reduce_dtype` of the tensors; a caller that knows it saves a pass over the list)."""
    return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=dtype or reduce_dtype(tensors))).square_()


def dots(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor], dtype: torch.dtype | None = None
         ) -> torch.Tensor:
    """a_i · b_i (all elements) for every pair, as one vector; a ``None`` in ``a`` (no gradient) gives 0.

    There is no foreach sum, so this is one fused multiply-reduce per pair (``torch.vdot`` on flat views):
    the fastest way on a CPU. On a GPU, where each launch costs more than the work, use :class:`BatchedDots`.
    """
    _check_pairs(a, b)
    dtype = dtype or reduce_dtype([*(x for x in a if x is not None), *b])
    return torch.stack([torch.zeros((), dtype=dtype, device=y.device) if x is None else
                        torch.vdot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)) for x, y in zip(a, b)])


class BatchedDots:
    """``dots`` for one fixed list of tensor shapes in three launches instead of one per tensor.

    The products are written into one flat scratch buffer (foreach copy, then foreach multiply, each a few
    multi-tensor kernels) and summed per tensor by one segment reduction. It costs a buffer the size of the
    tensors and one more pass over memory, which a GPU pays easily; on a CPU the loop in :func:`dots` is faster.
    Make it outside the training hot path: building it copies the lengths to the device.
    """

    def __init__(self, like: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
        numels = [t.numel() for t in like]
        device = like[0].device
        self._flat = torch.empty(sum(numels), dtype=dtype, device=device)
        self._views = [v.view(t.shape) for v, t in zip(self._flat.split(numels), like)]
        self._lengths = torch.tensor(numels, device=device)

    def __call__(self, a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pairs(a, b)
        if len(a) != len(self._views):
            raise ValueError(f"BatchedDots was made for {len(self._views)} tensors, got {len(a)}")
        present = [i for i, x in enumerate(a) if x is not None]
        if len(present) < len(a):  # a tensor without a gradient contributes 0
            self._flat.zero_()
        views = [self._views[i] for i in present]
        torch._foreach_copy_(views, [a[i] for i in present])
        torch._foreach_mul_(views, [b[i] for i in present])
        # unsafe: skips checking the lengths, which reads them to the host; they are right by construction
        return torch.segment_reduce(self._flat, "sum", lengths=self._lengths, unsafe=True)


def _check_pairs(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"dots needs lists of equal length, got {len(a)} and {len(b)}")
