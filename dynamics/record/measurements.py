"""The per-tensor quantities of one optimizer step, measured on the device into one buffer row.

Before the step: ‖θ_t‖², a copy of θ_t (for Δθ), and the gradient the optimizer will use, ‖g‖². The gradient
"the loss has" (after accumulation, unscaled, before clipping) is the backward's: where it may be rescaled or
clipped before the step (the loop did so before, or a GradScaler is given) it is measured at the end of each
backward pass too; a change between the two measurements (unscaling, ``clip_grad_norm_``) is undone in lca by
the per-tensor ratio of the two norms, and that ratio is the clip factor. After the step: ‖Δθ‖² and
lca = g·Δθ. A skipped step keeps ‖θ‖² and, where it was measured, the backward's ‖g‖²; nothing else.

These base measurements are a :class:`~.quantity.Quantity` like the others in what they declare (the params
and steps tables) and in how they frame a flush; the recorder calls their measuring methods itself, as every
other quantity builds on the step they open (θ_t saved, the gradient taken).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..schema import (BUFFER_ROWS, BUILTIN_TABLES, GRAD_SQ, LCA, PARAM_SQ, PARAMS, PRE_SQ, STEPS, UPDATE_SQ,
                      lr_column)
from . import distributed, frames, kernels
from .guard import Notes
from .quantity import Flushed, Frames, LossScale, Quantity, RecordedStep, RecordedTensors

_AT_STEP = "gradient taken at the optimizer step (no backward pass seen)"
_NO_GRADIENT = "optimizer step with no gradient (no backward pass): recorded, its rows have has_grad false"
_AT_STEP_UNEXPECTED = ("gradient taken at the optimizer step: no backward pass seen, or the gradients were "
                       "changed after it at a step where no change was expected (clipping or scaling began "
                       "mid-run); grad_sq and lca use the optimizer's gradient")


class StepMeasurements(Quantity):
    """Owns the quantities buffer (one row per recorded step), θ_t and the backward's ‖g‖² of the open step."""

    tables = (BUILTIN_TABLES[PARAMS], BUILTIN_TABLES[STEPS])

    def __init__(self, tensors: RecordedTensors, loss_scale: LossScale, rows: int, notes: Notes) -> None:
        self._t, self._scale, self._notes = tensors, loss_scale, notes
        self.buffer = tensors.buffer(rows, len(BUFFER_ROWS), tensors.n)
        self._zero = torch.zeros(1, device=tensors.device, dtype=tensors.dtype)  # "no gradient"
        self.dots = tensors.dots_for(tensors.local_params())  # made here: never in the hot path
        # θ_t and its measurements: made here, never in the hot path; the copy is allocated at the first
        # recorded step
        self._update = kernels.SavedUpdate(tensors.local_params(), tensors.dtype)
        self._bwd_sq: torch.Tensor | None = None       # the backward's ‖g‖² of the open step
        self._at_backward = True  # measure at backward end: the gradient may change before the step

    # ------------------------------------------------------------------------------------- backward
    def at_backward_end(self) -> None:
        if self._at_backward:
            sq = kernels.sq_norms(self._grads(), self._t.dtype)
            scale = self._scale.scale()
            self._bwd_sq = sq if scale is None else sq / scale.to(sq.dtype).square()

    def forget_backward(self) -> None:
        self._bwd_sq = None

    # ------------------------------------------------------------------------------------ the step
    def before_step(self, index: int, row: int, lrs: list, *, gradient: tuple[bool, bool] | None
                    ) -> RecordedStep:
        """‖θ_t‖² and θ_t saved; with ``gradient`` = (opened, changed) the optimizer's gradient too, in one
        reduction with the parameters (fewer launches)."""
        params = self._t.local_params()
        out = self.buffer[row]
        grads = None if gradient is None else self._grads()
        param_sq, grad_sq = self._update.save(params, also_norm=grads or ())  # θ_t saved and measured at once
        out[PARAM_SQ].copy_(param_sq)
        if grads is not None:
            out[PRE_SQ].copy_(grad_sq)
        step = RecordedStep(index, row, params, self._update.saved, lrs)
        if grads is not None:
            self._take_gradient(step, out, grads, *gradient)
        return step

    def gradient(self, step: RecordedStep, *, opened: bool, changed: bool) -> None:
        """The optimizer's gradient of ``step``, measured on its own (after a closure has run)."""
        grads, out = self._grads(), self.buffer[step.row]
        out[PRE_SQ].copy_(kernels.sq_norms(grads, self._t.dtype))
        self._take_gradient(step, out, grads, opened, changed)

    def _take_gradient(self, step: RecordedStep, out: torch.Tensor, grads: list[torch.Tensor], opened: bool,
                       changed: bool) -> None:
        if opened and not changed:  # the optimizer sees the backward's gradient untouched
            out[GRAD_SQ].copy_(out[PRE_SQ])
            self._at_backward = self._scale.scaler is not None
        elif changed and self._bwd_sq is not None:
            out[GRAD_SQ].copy_(self._bwd_sq)
        else:  # no backward pass seen, or a change the recorder did not expect: use the step's gradient
            out[GRAD_SQ].copy_(out[PRE_SQ])
            none = not opened and all(g is self._zero for g in grads)  # a step with no gradient at all
            self._notes.add(_NO_GRADIENT if none else _AT_STEP_UNEXPECTED if opened else _AT_STEP, step.index,
                            warn=not none)
            changed, self._at_backward = False, True
        step.grads, step.changed = grads, changed
        step.versions = [g._version for g in grads]
        step.has_grad = np.fromiter((g is not self._zero for g in grads), bool, self._t.n)

    def after_step(self, step: RecordedStep) -> None:
        """Form −Δθ in the saved copy of θ_t; ‖Δθ‖² and lca, the clipping undone, sums completed over shards."""
        out, grads = self.buffer[step.row], step.grads
        # θ_t − θ_{t+1} = −Δθ formed in the saved copy, measured as it is formed; without a gradient lca is 0
        update_sq, lca = self._update.form_update(step.params, [None if g is self._zero else g for g in grads])
        step.formed = True
        out[UPDATE_SQ].copy_(update_sq)
        out[LCA].copy_(lca)
        distributed.sum_over_shards(out, self._t.layout)  # every sum is whole before it is used
        if step.changed:  # undo a per-tensor rescaling (clipping) of the gradient
            ratio = out[GRAD_SQ] / out[PRE_SQ]
            out[LCA].mul_(torch.where(out[PRE_SQ] > 0, ratio, 0.0).sqrt())
        if any(g._version != v for g, v in zip(grads, step.versions)):
            out[LCA].fill_(math.nan)
            self._notes.add("lca not available: the optimizer changed the gradients in place", step.index)

    def skipped(self, row: int) -> bool:
        """A step that ended without an optimizer step: ‖θ‖² and the backward's ‖g‖² where it was measured
        (returned: was it?)."""
        out = self.buffer[row]
        out.fill_(math.nan)
        if self._bwd_sq is not None:
            out[GRAD_SQ].copy_(self._bwd_sq)
        out[PARAM_SQ].copy_(kernels.sq_norms(self._t.local_params(), self._t.dtype))
        distributed.sum_over_shards(out, self._t.layout)
        return self._bwd_sq is not None

    # ------------------------------------------------------------------------------------- helpers
    def _grads(self) -> list[torch.Tensor]:
        """This process's part of each gradient (a zero placeholder where there is none)."""
        local, zero = self._t.local, self._zero
        return [zero if p.grad is None else local(p.grad) for p in self._t.params]

    def release(self) -> None:
        """Free the copy of θ_t (at close)."""
        self._update.release()

    # --------------------------------------------------------------------------------------- flush
    def take(self, flushed: Flushed) -> Frames:
        """The params part, and per step the fixed per-step columns (clip factor where the gradient changed) and
        learning rates. ``flushed.values`` is this buffer's (the recorder takes it first, for every quantity)."""
        columns = {}
        for r, v in zip(flushed.rows, flushed.values):
            factor = self._clip_factor(v, r.has_grad, r.index) if r.changed else math.nan
            columns[r.index] = {"step": r.index, "recorded": True, "skipped": r.skipped, "clip_factor": factor,
                                **{lr_column(g): float(lr) for g, lr in enumerate(r.lrs)}}
        params = frames.param_frame(flushed.steps, flushed.values, flushed.has_grad, flushed.skipped,
                                    flushed.measured)
        return Frames({PARAMS: params}, columns)

    def _clip_factor(self, values: np.ndarray, has_grad: np.ndarray, step: int) -> float:
        """The step's clip factor; a change that is not one uniform factor, or looks like a missed
        GradScaler, is noted in the metadata with its step."""
        factor, verdict = frames.clip_factor(values[GRAD_SQ], values[PRE_SQ], has_grad)
        if verdict == "non-uniform":
            self._notes.add("gradient changed non-uniformly between backward and step (e.g. clip_grad_value_): "
                            "lca rescaled per tensor, clip_factor NaN", step)
        elif verdict == "power-of-two" and self._scale.scaler is None:
            self._notes.add("gradients were divided by a power of two between backward and step, as an AMP "
                            "GradScaler does: pass it as attach(scaler=...) or grad_sq is scaled", step)
        return factor
