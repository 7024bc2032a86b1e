"""Where a training process stands in a torchrun launch: joining the process group torchrun describes (nccl on
CUDA, gloo on CPU), or nothing at all for a plain single-process run (:func:`init_distributed`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the same variables)."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a DistributedDataParallel run (``world_size`` 1: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    owns_group: bool = False   # this module initialised the process group, so it also destroys it

    @property
    def on(self) -> bool:
        return self.world_size > 1 or self.owns_group


def init_distributed(device: str) -> Distributed:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU; CUDA device from LOCAL_RANK).

    Without torchrun and without an initialised group this is a no-op (a single-process run); a group the
    caller initialised already is used as it is.
    """
    if not dist.is_available() or (not dist.is_initialized() and not launched_by_torchrun()):
        return Distributed(device=device)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)
