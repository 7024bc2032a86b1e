"""Set-ups whose gradients the recorder would get wrong are refused at ``attach``, with an error naming the cause
(never recorded wrongly)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def check_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer to record, or an error that says why this one cannot be."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise NotImplementedError("dynamics does not support LBFGS: it evaluates the loss and its gradient "
                                  "inside step(), after the recorder's pre-step hook has run")
    return optimizer


def check_model(model: nn.Module) -> None:
    """FSDP1's flattened parameters and sparse gradients are refused."""
    for qualified, module in model.named_modules():
        name = type(module).__name__
        if name == "FullyShardedDataParallel":
            raise NotImplementedError(f"dynamics does not support the {name} wrapper (FSDP1), whose flattened "
                                      f"parameters lose the per-tensor boundaries: shard with "
                                      f"torch.distributed.fsdp.fully_shard (FSDP2) instead")
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            raise NotImplementedError(f"dynamics does not support sparse gradients yet: module {qualified!r} "
                                      f"({name}) has sparse=True")
