"""What the Lightning callback does, for either Lightning package (``lightning.pytorch`` or the older
``pytorch_lightning``): the callback classes in :mod:`dynamics.integrations.lightning` and
:mod:`dynamics.integrations.pytorch_lightning` add this to their package's ``Callback``.

At fit start (after the strategy has set the model and optimizer up, before the first batch) the recorder is
attached to the LightningModule and to the torch optimizer Lightning steps; the training loss is logged at
every batch; the recorder is closed at fit end, or when fit raises (the error goes into ``meta.json``).
Under the DDP strategy rank 0 attaches (after the all-reduce every process holds the same gradients and
parameters, as with plain DistributedDataParallel) and tells the other ranks whether that worked, so that
none of them trains on while rank 0 has stopped.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._common import RecorderSession, views_by_module_name

__all__ = ["LightningRecording"]

_SINGLE, _DDP = "SingleDeviceStrategy", "DDPStrategy"


def _strategy_kinds(strategy: Any) -> set[str]:
    return {cls.__name__ for cls in type(strategy).__mro__}


class LightningRecording:
    """``DynamicsCallback(out, views, **attach_options)``: records the LightningModule's training with
    :func:`dynamics.attach`.

    ``views`` is anything ``attach`` takes; in a dict a string that names a submodule of the LightningModule
    (``"model.cc"``) stands for that module. Since the callback is made before the model exists, give
    ``views_of=`` instead: a function of the LightningModule that returns the views
    (``views_of=lambda m: {"cc": m.model.cc, "mlo": m.model.mlo}``). Every other ``attach`` option
    (``every``, ``attribute``, ``probe``, ``condition``, ``seed``, ``config``, ...) is passed on; the GradScaler
    of a ``16-mixed`` precision plugin is found by the callback. ``loss_name`` is the name the training loss is
    logged under (None: not logged); ``metrics``: globs of the metrics the module logs with ``self.log`` that go
    into the run after each validation (``val_loss``, ...), at the step validation followed. ``recorder`` is
    the recorder (None on ranks other than 0), e.g. to ``log`` more scalars; it stays after fit, closed, for its
    ``run_dir``. A second ``fit`` with the same callback appends to the run (``resume``).
    """

    def __init__(self, out: str | os.PathLike, views: Any = None, *,
                 views_of: Callable[[nn.Module], Any] | None = None, loss_name: str | None = "loss",
                 metrics: Sequence[str] = ("val*",), **attach_options: Any) -> None:
        super().__init__()
        if (views is None) == (views_of is None):
            raise TypeError("DynamicsCallback: give views= (as dynamics.attach takes them) or views_of= (a function "
                            "of the LightningModule that returns them), one of the two")
        if views_of is not None and not callable(views_of):
            raise TypeError(f"DynamicsCallback: views_of must be a function of the LightningModule, got "
                            f"{type(views_of).__name__}")
        self.out = out
        self._views, self._views_of, self._loss_name, self._metrics = views, views_of, loss_name, tuple(metrics)
        self._session = RecorderSession(out, attach_options, "DynamicsCallback")
        self._losses: list[torch.Tensor] = []
        self._global_step = 0

    @property
    def recorder(self) -> Any:
        """The last recorder (kept after fit, for its ``run_dir``; None on ranks other than 0)."""
        return self._session.recorder

    # ------------------------------------------------------------------------------------------ set-up
    def _check_set_up(self, trainer: Any) -> torch.optim.Optimizer:
        """The one optimizer to record; set-ups the callback cannot record right are refused."""
        kinds = _strategy_kinds(trainer.strategy)
        name = type(trainer.strategy).__name__
        if _SINGLE not in kinds and _DDP not in kinds:
            raise NotImplementedError(f"DynamicsCallback supports the single-device and DDP strategies, not {name}: "
                                      f"record other strategies with dynamics.attach in your own loop")
        if _DDP in kinds and trainer.world_size > 1 and self._session.options.get("attribute"):
            raise NotImplementedError("DynamicsCallback: shared-weight attribution (attribute=) under the DDP strategy "
                                      "is not supported by the callback; record it with dynamics.attach on the "
                                      "DistributedDataParallel model in a plain loop")
        optimizers = list(trainer.optimizers)
        if len(optimizers) != 1:
            raise NotImplementedError(
                f"DynamicsCallback records a LightningModule trained by one optimizer; configure_optimizers gave "
                f"{len(optimizers)}. With several optimizers each backward pass reaches parameters of the others, "
                f"so one recorder per optimizer would mix their steps: record them with dynamics.attach on the "
                f"submodule each optimizer trains, in your own loop")
        return optimizers[0]

    def _views_for(self, pl_module: nn.Module) -> Any:
        views = self._views_of(pl_module) if self._views_of is not None else self._views
        return views_by_module_name(pl_module, views)

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        if self._session.open:  # a fit that ended without on_fit_end or on_exception
            self._close(RuntimeError("fit began again before the last fit ended"))
        optimizer = self._check_set_up(trainer)
        writes = trainer.global_rank == 0
        self._losses, self._global_step = [], trainer.global_step
        self._session.start(pl_module, optimizer, self._views_for(pl_module) if writes else None,
                            scaler=getattr(trainer.precision_plugin, "scaler", None), writes=writes,
                            agree=lambda message: trainer.strategy.broadcast(message, src=0))

    # ------------------------------------------------------------------------------------------ training
    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self._global_step = trainer.global_step  # after a checkpoint was restored, which happens after fit start

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """The training loss: kept on the device per batch, logged once per optimizer step (the mean over the
        step's batches), after that step, so the recorder files it under the step just taken."""
        if not self._session.open or self._loss_name is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
                loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for accumulation
            self._losses.append(loss.detach().reshape(()))
        if trainer.global_step != self._global_step:  # this batch ended an optimizer step
            self._global_step = trainer.global_step
            self._log_losses()

    def _log_losses(self) -> None:
        losses, self._losses = self._losses, []
        if losses:
            self._session.log({self._loss_name: torch.stack(losses).mean()})

    def on_validation_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """The module's validation metrics (``self.log``), filed under the training step validation followed."""
        if not self._session.open or trainer.sanity_checking or not self._metrics:
            return
        chosen = {name: value for name, value in trainer.callback_metrics.items()
                  if any(fnmatch.fnmatchcase(name, g) for g in self._metrics)
                  and (isinstance(value, torch.Tensor) and value.numel() == 1
                       or isinstance(value, (int, float)) and not isinstance(value, bool))}
        self._session.log(chosen)

    # ------------------------------------------------------------------------------------------ the end
    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._close(None)

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        self._close(exception)

    def _close(self, exception: BaseException | None) -> None:
        if self._session.open:
            self._log_losses()  # batches after the last optimizer step
        self._session.close(exception)
