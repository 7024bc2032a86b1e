"""Pure functions on lists of tensors: per-tensor squared norms and dot products, stacked on the device.

No hooks, no state and no host transfers: each returns one 1-D tensor on the tensors' device, ready to be
written into a recorder buffer row. Low-precision tensors are reduced in float32.
"""
from __future__ import annotations

import math
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
        if not present:  # no tensor has a gradient (a step without a backward pass): all 0, no empty foreach
            return self._flat.new_zeros(len(a))
        if len(present) < len(a):  # a tensor without a gradient contributes 0
            self._flat.zero_()
        views = [self._views[i] for i in present]
        torch._foreach_copy_(views, [a[i] for i in present])
        torch._foreach_mul_(views, [b[i] for i in present])
        # unsafe: skips checking the lengths, which reads them to the host; they are right by construction
        return torch.segment_reduce(self._flat, "sum", lengths=self._lengths, unsafe=True)


# a tensor of at least this many elements is measured on its own while it is in the CPU's cache; smaller ones
# (biases, norm layers: together a few hundred KB) in a few multi-tensor kernels
CACHE_BLOCK_MIN = 32_768
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _saved_dtype(t: torch.Tensor) -> torch.dtype:
    """θ_t of a float16/bfloat16 tensor is kept in float32, where θ_t − θ_{t+1} of two of them is exact."""
    return torch.float32 if t.dtype in _LOW_PRECISION else t.dtype


class SavedUpdate:
    """θ_t saved with ‖θ_t‖², then −Δθ formed in the copy with ‖Δθ‖² and g·Δθ, in few passes over memory.

    Unfused, the two steps read or write every parameter-sized tensor ten times (‖θ‖², the copy, θ_t − θ_{t+1},
    ‖Δθ‖², g·Δθ). Here, on a CPU, each large tensor is measured on its own right after it is copied or
    subtracted, while it is still in the cache: its square and dot products then cost no further pass over
    memory, and the traffic is close to what cannot be avoided (read θ and write θ_t; read θ_t, θ_{t+1} and g).
    Small tensors, and every tensor on a GPU (where each launch costs more than the work), go through a few
    multi-tensor kernels instead. θ_t of a float16/bfloat16 tensor is kept in float32, where θ_t − θ_{t+1}
    of two of them is exact. Make it outside the training hot path (it copies indices to the device); the copy
    of θ_t is allocated at the first :meth:`save` and freed by :meth:`release`.
    """

    def __init__(self, like: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._like = [(t.shape, _saved_dtype(t), t.device) for t in like]
        self.saved: list[torch.Tensor] | None = None
        on_cpu = like[0].device.type == "cpu" if like else True
        self._own = [i for i, (t, (_, saved, _)) in enumerate(zip(like, self._like))
                     if on_cpu and t.numel() >= CACHE_BLOCK_MIN and saved == dtype]
        own = set(self._own)
        self._grouped = [i for i in range(len(like)) if i not in own]
        device = like[0].device if like else torch.device("cpu")
        # the values come back grouped, then own; this puts them in record order
        self._order = torch.tensor([*self._grouped, *self._own], dtype=torch.long, device=device)
        self._group_dots = BatchedDots([like[i] for i in self._grouped], dtype) if self._grouped else None

    def save(self, params: Sequence[torch.Tensor], also_norm: Sequence[torch.Tensor] = ()
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Copy θ_t (``params``) into :attr:`saved`; ‖θ_t‖² per tensor, and ‖t‖² of every tensor of
        ``also_norm`` (the gradients: one multi-tensor reduction with the grouped parameters) or None."""
        if self.saved is None:
            self.saved = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in self._like]
        grouped = [params[i] for i in self._grouped]
        extra = len(also_norm)
        squares = sq_norms([*also_norm, *grouped], self.dtype) if extra or grouped else None
        if grouped:
            torch._foreach_copy_([self.saved[i] for i in self._grouped], grouped)
        own = []
        for i in self._own:
            saved = self.saved[i].copy_(params[i]).view(-1)
            own.append(torch.vdot(saved, saved))  # from the cache: the copy has just touched it
        param_sq = self._in_order(squares[extra:] if grouped else None, own)
        return param_sq, (squares[:extra] if extra else None)

    def release(self) -> None:
        """Free the copy of θ_t."""
        self.saved = None

    def form_update(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`saved` becomes θ_t − θ_{t+1} = −Δθ; returns ‖Δθ‖² and g·Δθ per tensor (0 where g is None)."""
        _check_pairs(params, grads)
        update_sq = lca = None
        if self._grouped:
            minus = [self.saved[i] for i in self._grouped]
            torch._foreach_sub_(minus, [params[i] for i in self._grouped])
            update_sq = sq_norms(minus, self.dtype)
            lca = self._group_dots([grads[i] for i in self._grouped], minus).neg_()
        own_sq, own_lca = [], []
        for i in self._own:
            minus = self.saved[i].sub_(params[i]).view(-1)
            own_sq.append(torch.vdot(minus, minus))  # both from the cache, as the subtraction left it
            g = grads[i]
            own_lca.append(minus.new_zeros(()) if g is None else torch.vdot(g.reshape(-1).to(self.dtype), minus))
        lca_own = torch.stack(own_lca).neg_() if own_lca else None
        return self._in_order(update_sq, own_sq), self._in_order(lca, lca_own)

    def _in_order(self, grouped: torch.Tensor | None, own: list[torch.Tensor] | torch.Tensor | None) -> torch.Tensor:
        if isinstance(own, list):
            own = torch.stack(own) if own else None
        if own is None:
            return grouped
        values = own if grouped is None else torch.cat([grouped, own])
        return torch.empty_like(values).index_copy_(0, self._order, values)


class PartSums:
    """Per view v of each shared tensor: ‖g_v‖², g_v·Δθ and g_v·(g − g_v) = Σ_{w≠v} g_v·g_w, as one
    ``[views, 3, tensors]`` block, from the views' gradient parts and −Δθ.

    As in :class:`SavedUpdate`, on a CPU each large tensor's parts are reduced together while they are in the
    cache (each part and −Δθ read from memory once); small tensors, and all on a GPU, in multi-tensor
    kernels. Make it outside the training hot path.
    """

    def __init__(self, like: Sequence[torch.Tensor], views: int, dtype: torch.dtype) -> None:
        self.dtype, self.views, self.n = dtype, views, len(like)
        on_cpu = like[0].device.type == "cpu" if like else True
        self._own = [i for i, t in enumerate(like) if on_cpu and t.numel() >= CACHE_BLOCK_MIN and t.dtype == dtype]
        own = set(self._own)
        self._grouped = [i for i in range(len(like)) if i not in own]
        device = like[0].device if like else torch.device("cpu")
        self._order = torch.tensor([*self._grouped, *self._own], dtype=torch.long, device=device)
        self._dots = BatchedDots([like[i] for i in self._grouped], dtype) if self._grouped else None

    def __call__(self, parts: Sequence[Sequence[torch.Tensor]], minus_delta: Sequence[torch.Tensor] | None
                 ) -> torch.Tensor:
        """``parts[v][i]``: view v's part of tensor i; ``minus_delta`` None (a skipped step): g_v·Δθ is NaN."""
        if len(parts) != self.views or any(len(p) != self.n for p in parts):
            raise ValueError(f"PartSums was made for {self.views} views of {self.n} tensors")
        blocks = []
        if self._grouped:
            blocks.append(self._grouped_sums([[p[i] for i in self._grouped] for p in parts],
                                             None if minus_delta is None else [minus_delta[i] for i in self._grouped]))
        if self._own:
            blocks.append(self._own_sums(parts, minus_delta))
        values = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
        if len(blocks) == 1 and not self._own:
            return values
        return torch.empty_like(values).index_copy_(2, self._order, values)

    def _grouped_sums(self, parts: list[list[torch.Tensor]], minus_delta: list[torch.Tensor] | None) -> torch.Tensor:
        views, n = len(parts), len(parts[0])
        out = torch.zeros(views, 3, n, dtype=self.dtype, device=self._order.device)
        out[:, 0] = sq_norms([t for p in parts for t in p], self.dtype).view(views, n)
        for a in range(views):
            if minus_delta is None:
                out[a, 1] = math.nan
            else:
                out[a, 1] = self._dots(parts[a], minus_delta).neg_()
            for b in range(a + 1, views):
                cross = self._dots(parts[a], parts[b])
                out[a, 2] += cross
                out[b, 2] += cross
        return out

    def _own_sums(self, parts: Sequence[Sequence[torch.Tensor]], minus_delta: Sequence[torch.Tensor] | None
                  ) -> torch.Tensor:
        """The large tensors one by one, every part and −Δθ read from memory once (the rest from the cache);
        per tensor ‖g_v‖², then g_v·(θ_t − θ_{t+1}), then g_a·g_b of each pair, gathered in one stack."""
        views, pairs = self.views, [(a, b) for a in range(self.views) for b in range(a + 1, self.views)]
        dots = []
        for i in self._own:
            flat = [p[i].reshape(-1) for p in parts]
            dots += [torch.vdot(f, f) for f in flat]
            if minus_delta is not None:
                md = minus_delta[i].reshape(-1)
                dots += [torch.vdot(f, md) for f in flat]
            dots += [torch.vdot(flat[a], flat[b]) for a, b in pairs]
        per = torch.stack(dots).view(len(self._own), -1)  # [tensors, views (+ views) + pairs]
        out = per.new_empty(views, 3, len(self._own))
        out[:, 0] = per[:, :views].T
        if minus_delta is None:
            out[:, 1] = math.nan
        else:
            out[:, 1] = per[:, views:2 * views].T.neg()
        out[:, 2] = 0.0
        for k, (a, b) in enumerate(pairs):
            pair = per[:, per.shape[1] - len(pairs) + k]
            out[a, 2] += pair
            out[b, 2] += pair
        return out


def _check_pairs(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"dots needs lists of equal length, got {len(a)} and {len(b)}")
