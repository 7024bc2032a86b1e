"""Update alignment, a plug-in quantity: per tensor, the dot product of consecutive updates Δθ_{t−1}·Δθ_t.

Its cosine, cos(Δθ_{t−1}, Δθ_t) = Δθ_{t−1}·Δθ_t / (‖Δθ_{t−1}‖ ‖Δθ_t‖), tells a layer that oscillates (negative: a
step undoes the last) from one that makes steady progress (near 1). The dot product is what is stored: it is
additive over tensors and shards, so the cosine of any group of tensors (a view, a layer) is derived exactly
after summing (:func:`dynamics.analysis.derived.update_cosine`, with ‖Δθ‖² from the params table).

Defined at a taken step whose previous step attempt was taken and recorded; NaN otherwise (the first recorded
step, after a skipped step, after an unrecorded one: record every step, ``every=1``, to have it at every step).
Costs one copy of the recorded parameters (the last update, allocated at the first recorded step) and one dot
product per tensor per recorded step, on the device.

    recorder = dynamics.attach(model, optimizer, views, out="run", parts=[UpdateAlignment()])
    ...
    table = dynamics.load_table("run", "update_alignment")   # step, param, view, layer, depth, update_dot
"""
from __future__ import annotations

import torch

from ..schema import quantity_table
from . import distributed, frames
from .quantity import Binding, Flushed, Frames, Quantity, RecordedStep

TABLE = quantity_table("update_alignment", "update_dot")


class UpdateAlignment(Quantity):
    """Δθ_{t−1}·Δθ_t per recorded tensor (see the module docstring)."""

    tables = (TABLE,)

    def bind(self, binding: Binding) -> None:
        super().bind(binding)
        tensors = binding.tensors
        self._buffer = tensors.buffer(binding.rows, tensors.n)
        self._dots, self._layout = binding.dots, tensors.layout
        self._last: list[torch.Tensor] | None = None  # −Δθ of the last recorded step (its sign cancels in the dot)
        self._last_step: int | None = None

    def on_step_end(self, step: RecordedStep) -> None:
        current = step.minus_delta
        if self._last is not None and self._last_step == step.index - 1:
            out = self._buffer[step.row]
            out.copy_(self._dots(self._last, current))
            distributed.sum_over_shards(out, self._layout)
        if self._last is None:
            self._last = [t.detach().clone() for t in current]
        else:
            torch._foreach_copy_(self._last, current)
        self._last_step = step.index

    def take(self, flushed: Flushed) -> Frames:
        values = self._buffer.take(len(flushed.steps))
        return Frames({TABLE.name: frames.tensor_frame(flushed.steps, {"update_dot": values})})

    def close(self, step: int) -> None:
        self._last = None  # the copy of the last update
