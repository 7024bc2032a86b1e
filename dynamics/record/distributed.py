"""Where the recorded tensors live across processes, and the collectives that make one record of them.

Three layouts (decided once, at attach time, by :func:`layout_of`):

- **one process**: nothing to do.
- **replicated** (DistributedDataParallel): after the all-reduce every process holds the same gradient and
  the same parameters, so rank 0 records them and the other ranks record nothing. The exception is per-call
  attribution: each process's per-view parts come from its own batch, so every rank keeps them and they are
  averaged across processes (as DDP averages the gradient) before they are measured; rank 0 still writes.
- **sharded** (``fully_shard``, FSDP2): each parameter and gradient is a DTensor of which every process holds
  one shard. Every rank measures its shards and the per-tensor sums of squares and dot products are summed
  across the shard group (one all-reduce per recorded step) before anything is derived from them, so the
  record equals the unsharded run's; rank 0 writes it.

The collectives stay on the device (no host synchronisation); every rank must reach them at the same steps,
which holds because every rank runs the same loop with the same schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

_DDP = "DistributedDataParallel"


def _dist_running() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor
    return DTensor


@dataclass(frozen=True)
class Layout:
    """How this process takes part in the record: whether it records and writes, and over which process
    group its per-tensor sums are completed (``shard_group``) or its attribution parts averaged
    (``replica_group``)."""

    records: bool = True
    writes: bool = True
    shard_group: object | None = None
    replica_group: object | None = None
    replicas: int = 1

    @property
    def sharded(self) -> bool:
        return self.shard_group is not None


def layout_of(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], *, attribution: bool,
              probe: bool) -> Layout:
    """The layout of ``params`` (the recorded tensors of ``model``, called ``names``); unsupported distributed
    set-ups raise an error that names the cause."""
    dtensor = _dtensor_type()
    sharded = [p for p in params if dtensor is not None and isinstance(p, dtensor)]
    rank = torch.distributed.get_rank() if _dist_running() else 0
    if sharded:
        if len(sharded) != len(params):
            plain = next(n for n, p in zip(names, params) if not isinstance(p, dtensor))
            raise NotImplementedError(f"dynamics: some recorded parameters are sharded (DTensor) and others, such "
                                      f"as {plain!r}, are not: shard the whole model with fully_shard")
        if attribution:
            raise NotImplementedError("dynamics: per-call attribution (attribute=) is not supported under "
                                      "fully_shard: the per-view parts would be unsharded gradients on every rank")
        if probe:
            raise NotImplementedError("dynamics: the probe is not supported under fully_shard: it differentiates "
                                      "with respect to the parameters, which FSDP replaces during forward")
        return Layout(writes=rank == 0, shard_group=_shard_group(sharded))
    ddp = next((m for m in model.modules() if type(m).__name__ == _DDP), None)
    if ddp is None or not _dist_running():
        return Layout()
    group = ddp.process_group
    if attribution:
        return Layout(writes=rank == 0, replica_group=group, replicas=torch.distributed.get_world_size(group))
    return Layout(records=rank == 0, writes=rank == 0)


def _shard_group(params: Sequence[torch.Tensor]) -> object:
    """The process group a DTensor's shards are spread over; every recorded tensor must agree on it."""
    from torch.distributed.tensor import Replicate, Shard
    kinds = set()
    for p in params:
        dims = []
        for dim, placement in enumerate(p.placements):
            if isinstance(placement, Shard):
                dims.append(dim)
            elif not isinstance(placement, Replicate):
                raise NotImplementedError(f"dynamics: a parameter of shape {tuple(p.shape)} has placement "
                                          f"{placement}; only Shard and Replicate placements are supported")
        kinds.add((p.device_mesh, tuple(dims)))
    if len(kinds) != 1:
        raise NotImplementedError("dynamics: the recorded parameters are sharded over different device meshes or "
                                  "mesh dimensions; one fully_shard mesh for the whole model is supported")
    mesh, dims = kinds.pop()
    if len(dims) != 1:
        raise NotImplementedError(f"dynamics: parameters sharded over {len(dims)} mesh dimensions; one is supported "
                                  f"(fully_shard, or HSDP with one shard dimension)")
    return mesh.get_group(dims[0])


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of ``t``: the local shard of a DTensor, else ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else to_local()


def sum_over_shards(values: torch.Tensor, layout: Layout) -> None:
    """Complete per-tensor sums of squares and dot products measured on local shards (in place)."""
    if layout.shard_group is not None:
        torch.distributed.all_reduce(values, group=layout.shard_group)


def average_over_replicas(parts: list[list[torch.Tensor]], layout: Layout) -> list[list[torch.Tensor]]:
    """Per-process gradient parts (per view, per tensor) averaged across the DDP processes, as DDP averages the
    gradient: new tensors (one all-reduce of their concatenation); the parts themselves as they are without
    DDP. The inputs are never written (they may be autograd's own tensors)."""
    if layout.replica_group is None:
        return parts
    tensors = [t for part in parts for t in part]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat, group=layout.replica_group)
    flat.div_(layout.replicas)
    averaged = [chunk.view_as(t) for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors]))]
    n = len(parts[0])
    return [averaged[v * n:(v + 1) * n] for v in range(len(parts))]


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wrapper holds (the probe runs it locally, outside DDP's reducer)."""
    return model.module if type(model).__name__ == _DDP else model


def agree_with_writer(start_step: int, error: Exception | None, layout: Layout) -> int:
    """Rank 0 opened the run: every recording process learns its first step, or the error that stopped it
    (so no process waits forever at a collective that rank 0 never reaches). Host traffic at attach only."""
    if layout.sharded or layout.replica_group is not None:
        message = [start_step, None if error is None else f"{type(error).__name__}: {error}"]
        torch.distributed.broadcast_object_list(message, src=0)
        start_step, text = message
        if error is None and text is not None:
            raise RuntimeError(f"dynamics: rank 0 could not open the run: {text}")
    if error is not None:
        raise error
    return start_step
