"""A recorded quantity as a plug-in: the :class:`Quantity` interface, what it is given when attached
(:class:`Binding`), and what it sees of a step (:class:`RecordedStep`) and of a flush (:class:`Flushed`).

A quantity is one class in one file (Cockpit's quantities, torchmetrics' declared state): it declares its
tables (:class:`dynamics.schema.TableSpec`: columns, key, density, how values reduce), the steps it needs
recorded beyond ``every`` (``needs``), what ``meta.json`` says of it (``describe``), and owns its device
buffers. The recorder calls it at fixed points of a step only: ``on_forward`` (if it ``watches_forward``),
``on_step_start`` at the optimizer's pre-step, ``on_update`` once the step has run (θ_t and θ_{t+1} both at
hand), ``on_step_end`` once the update Δθ is formed, ``on_skipped`` for a step the optimizer did not take, and
``take(flushed)``, which turns its buffered rows into part frames at a flush (one transfer per buffer). The
base measurements (:mod:`.measurements`), the probe and shared-weight attribution are quantities;
``attach(..., parts=[...])`` takes more.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..schema import TableSpec
from . import distributed, kernels
from .buffers import DeviceBuffer
from .views import device_of

if TYPE_CHECKING:
    from .guard import HookGuard, Notes


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
class Binding:
    """What a quantity is given when it is attached: the recorded tensors, the model (outside any
    DistributedDataParallel wrapper), the failure guard and the run's notes, the loss scale, the number of
    buffer rows (one per recorded step until a flush), per-tensor dot products for tensors shaped like the
    recorded ones, and each module's name by ``id``."""

    tensors: RecordedTensors
    model: nn.Module
    guard: "HookGuard"
    notes: "Notes"
    loss_scale: LossScale
    rows: int
    dots: Callable
    module_names: Mapping[int, str]


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
    """The buffered steps of one flush, on the host: the base quantities ``[n, rows, tensors]`` in the order of
    :data:`dynamics.schema.BUFFER_ROWS`, and per step its index, flags and what the host kept of it."""

    steps: np.ndarray
    values: np.ndarray
    has_grad: np.ndarray
    skipped: np.ndarray
    measured: np.ndarray
    rows: Sequence[StepRow]

    @classmethod
    def of(cls, rows: Sequence[StepRow], values: np.ndarray) -> "Flushed":
        return cls(np.array([r.index for r in rows], dtype=np.int64), values, np.stack([r.has_grad for r in rows]),
                   np.array([r.skipped for r in rows], dtype=bool), np.array([r.measured for r in rows], dtype=bool),
                   list(rows))


@dataclass
class Frames:
    """What a part hands back at a flush: part frames by table, and per step extra per-step columns."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    step_columns: dict[int, dict] = field(default_factory=dict)


class Quantity:
    """A recorded quantity (see the module docstring). Every method is optional (does nothing here); a
    subclass declares ``tables`` and overrides what it needs, and calls ``super().bind(binding)`` if it
    overrides :meth:`bind`."""

    tables: tuple[TableSpec, ...] = ()  # the tables this quantity writes
    watches_forward = False  # on_forward is called at every grad-enabled forward pass of the model
    _binding: Binding | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, model: nn.Module) -> None:
        """At attach, before the run is opened: refuse a set-up this quantity cannot record (raise)."""

    def bind(self, binding: Binding) -> None:
        """Attached to a recorder: allocate device buffers here, never in the hot path. One open recorder at a
        time: the recorder lets go of it (:meth:`unbind`) when it closes."""
        if self._binding is not None:
            raise ValueError(f"{self.name} is attached to an open recorder: give each attach() its own")
        self._binding = binding

    def unbind(self) -> None:
        """The recorder has closed (after :meth:`close`): the quantity may be attached again."""
        self._binding = None

    def needs(self, step: int) -> bool:
        """Whether step ``step`` must be recorded for this quantity even where ``every`` skips it."""
        return False

    def describe(self) -> Mapping[str, Any]:
        """Entries this quantity adds to ``meta.json`` (JSON values)."""
        return {}

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
        """This quantity's first ``len(flushed.steps)`` rows as frames (one transfer per buffer), rows reset."""
        return Frames()

    def close(self, step: int) -> None:
        """Remove this quantity's hooks; its last notes (``step``: the recorder's next step)."""
