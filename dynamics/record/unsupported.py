"""Training set-ups whose gradients the recorder would get wrong are refused at ``attach``, with an error naming
the cause (never recorded wrongly); trainers' optimizer wrappers are unwrapped to the torch optimizer inside.
(The user's misuse of dynamics itself is :mod:`.misuse`.)"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


_HOLDERS = ("_optimizer", "optimizer")  # where trainers' wrappers keep the torch optimizer (Lightning, Accelerate)
_MAX_WRAPPERS = 8


def _qualname(obj: Any) -> str:
    return type(obj).__module__ + "." + type(obj).__qualname__


def _hookable(optimizer: Any) -> bool:
    """A torch optimizer whose own ``Optimizer.__init__`` ran: it has step-hook registries of its own (a proxy
    that forwards attribute reads to the optimizer it holds, such as Lightning's, has none)."""
    return isinstance(optimizer, torch.optim.Optimizer) and "_optimizer_step_pre_hooks" in vars(optimizer)


def _held(wrapper: Any) -> Any | None:
    """The torch optimizer a wrapper holds (duck-typed: ``._optimizer`` or ``.optimizer``), or None."""
    for name in _HOLDERS:
        try:
            inner = getattr(wrapper, name, None)
        except Exception:  # noqa: BLE001 - a property that fails means no optimizer there
            inner = None
        if inner is not None and inner is not wrapper and isinstance(inner, torch.optim.Optimizer):
            return inner
    return None


def unwrap_optimizer(optimizer: Any) -> tuple[torch.optim.Optimizer, list[str]]:
    """The torch optimizer to record, and the classes of the wrappers around it (outermost first).

    Trainers hand out wrappers (Lightning's ``LightningOptimizer``, Accelerate's ``AcceleratedOptimizer``) whose
    ``step()`` calls the torch optimizer they hold; the recorder's hooks go on that one. An object that neither
    is a torch optimizer nor holds one is refused with an error that names the fix; so is LBFGS.
    """
    wrappers, current = [], optimizer
    while not _hookable(current) and len(wrappers) < _MAX_WRAPPERS:
        inner = _held(current)
        if inner is None:
            break
        wrappers.append(_qualname(current))
        current = inner
    if not _hookable(current):
        what = _qualname(current)
        if isinstance(current, torch.optim.Optimizer):
            raise TypeError(f"optimizer {what} is a torch.optim.Optimizer whose Optimizer.__init__ did not run (it "
                            f"has no step hooks) and holds no optimizer at .optimizer or ._optimizer: pass "
                            f"attach() the torch optimizer it wraps")
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a wrapper holding one at .optimizer or "
                        f"._optimizer, got {what}: pass attach() the torch optimizer itself")
    if isinstance(current, torch.optim.LBFGS):
        raise NotImplementedError("dynamics does not support LBFGS: it evaluates the loss and its gradient many "
                                  "times inside step() (a closure called once per evaluation), so no one gradient "
                                  "and update belong together")
    return current, wrappers


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
