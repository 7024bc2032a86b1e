"""What the parts of a recorder share: the recorded tensors, one recorded step, and the narrow interface through
which the recorder calls a part (the probe, shared-weight attribution).

A part owns its device buffers and is called at fixed points of a step only (in the spirit of torchmetrics'
update/compute split): ``on_step_start`` at the optimizer's pre-step, ``on_update`` once the step has run
(θ_t and θ_{t+1} both at hand), ``on_step_end`` once the update Δθ is formed, ``on_skipped`` for a step the
optimizer did not take, and ``take(flushed)``, which turns its buffered rows into part frames at a flush.
Parts that need to see forward passes of the model set ``watches_forward``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import distributed, kernels
from .buffers import DeviceBuffer
from .views import device_of


class LossScale:
    """The GradScaler's current loss scale, kept on the device; ``None`` without a scaler (or a disabled one)."""

    def __init__(self, scaler: Any) -> None:
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def scale(self) -> torch.Tensor | None:
        return None if self.scaler is None else getattr(self.scaler, "_scale", None)

    def inverse(self) -> torch.Tensor | None:
        scale = self.scale()
        return None if scale is None else scale.reciprocal()


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class RecordedTensors:
    """The recorded parameter tensors (in record order), where they live and how they are reduced."""

    params: list[nn.Parameter]
    layout: distributed.Layout
    device: torch.device
    dtype: torch.dtype  # of every reduction and buffer
    n: int = field(init=False)
    # this process's part of a tensor (its shard under ``fully_shard``, else the tensor itself); a plain
    # attribute, as it is called per tensor several times a step
    local: Callable[[torch.Tensor], torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", len(self.params))
        object.__setattr__(self, "local", distributed.local if self.layout.sharded else _identity)

    @classmethod
    def of(cls, params: Sequence[nn.Parameter], layout: distributed.Layout) -> "RecordedTensors":
        return cls(list(params), layout, device_of(params), kernels.reduce_dtype(params))

    def local_params(self) -> list[torch.Tensor]:
        return [self.local(p) for p in self.params]

    def buffer(self, rows: int, *shape: int) -> DeviceBuffer:
        return DeviceBuffer(rows, *shape, device=self.device, dtype=self.dtype)

    def dots_for(self, like: Sequence[torch.Tensor]) -> Callable:
        """Per-tensor dot products for tensors shaped like ``like``: one launch per tensor costs more than the
        work on a GPU, so they are batched there. Made at attach, never in the hot path."""
        if self.device.type == "cuda":
            return kernels.BatchedDots(like, self.dtype)
        return functools.partial(kernels.dots, dtype=self.dtype)


@dataclass
class RecordedStep:
    """One recorded optimizer step between the pre-step and the post-step hook, as the parts see it."""

    index: int                      # the step's index (optimizer step attempts, from 0)
    row: int                        # its row in every buffer until the next flush
    params: list[torch.Tensor]      # this process's part of each tensor: θ_t before the step, θ_{t+1} after
    saved: list[torch.Tensor]       # the copy of θ_t; θ_t − θ_{t+1} once the update is formed
    lrs: list                       # each parameter group's learning rate
    grads: list[torch.Tensor] | None = None   # the optimizer's gradient (a zero placeholder where none)
    versions: list[int] = field(default_factory=list)
    has_grad: np.ndarray | None = None
    changed: bool = False           # the gradient changed between backward and step (clipping, unscaling)
    formed: bool = False            # ``saved`` holds −Δθ

    @property
    def theta_t(self) -> list[torch.Tensor]:
        assert not self.formed, "θ_t was overwritten by the update"
        return self.saved

    @property
    def minus_delta(self) -> list[torch.Tensor]:
        """θ_t − θ_{t+1} = −Δθ per tensor (from ``on_step_end`` on)."""
        assert self.formed, "the update is formed after on_update"
        return self.saved

    def row_record(self) -> "StepRow":
        return StepRow(self.index, False, self.changed, True, self.lrs, self.has_grad)


@dataclass(frozen=True)
class StepRow:
    """What the host keeps of a buffered step until the flush (no device data)."""

    index: int
    skipped: bool
    changed: bool
    measured: bool   # its gradient was measured (a skipped step's may not be)
    lrs: list
    has_grad: np.ndarray


@dataclass(frozen=True)
class Flushed:
    """The buffered steps of one flush, on the host: the per-tensor quantities ``[n, rows, tensors]`` in the
    order of :data:`dynamics.schema.BUFFER_ROWS`, and per step its index and flags."""

    steps: np.ndarray
    values: np.ndarray
    has_grad: np.ndarray
    skipped: np.ndarray
    measured: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[StepRow], values: np.ndarray) -> "Flushed":
        return cls(np.array([r.index for r in rows], dtype=np.int64), values, np.stack([r.has_grad for r in rows]),
                   np.array([r.skipped for r in rows], dtype=bool), np.array([r.measured for r in rows], dtype=bool))


@dataclass
class Frames:
    """What a part hands back at a flush: part frames by table, and per step extra per-step columns."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    step_columns: dict[int, dict] = field(default_factory=dict)


class StepPart:
    """A quantity measured alongside the per-tensor basics. Every method is optional (does nothing here)."""

    watches_forward = False  # on_forward is called at every grad-enabled forward pass of the model

    def on_forward(self, *, recording: bool, new_step: bool) -> None:
        """A forward pass of the model; ``new_step``: no backward pass of the coming step has run yet."""

    def on_step_start(self, step: RecordedStep) -> None:
        """The optimizer is about to step (parameters at θ_t)."""

    def on_update(self, step: RecordedStep) -> None:
        """The optimizer has stepped: ``step.params`` hold θ_{t+1}, ``step.theta_t`` still θ_t."""

    def on_step_end(self, step: RecordedStep) -> None:
        """The update is formed: ``step.minus_delta`` = θ_t − θ_{t+1}."""

    def on_skipped(self, index: int, row: int) -> None:
        """Step ``index`` ended without an optimizer step; it is recorded in buffer row ``row``."""

    def take(self, flushed: Flushed) -> Frames:
        """This part's first ``len(flushed.steps)`` rows as frames (one transfer per buffer), rows reset."""
        return Frames()

    def close(self, step: int) -> None:
        """Remove this part's hooks; its last notes (``step``: the recorder's next step)."""
