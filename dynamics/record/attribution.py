"""Per-view gradients inside a module that several views share.

A shared module's parameter gradient is a sum of one part per view, g = Σ_v g_v. Two ways to split it, both
through autograd, so they work for any module type:

* **Per call** (``attribute={module: ["cc", "mlo"]}``, or ``with dynamics.view("cc"): module(x)``): while the
  module runs for view v, its parameters are replaced by *aliases* (``p.expand_as(p)``: same storage, own graph
  node). The gradient reaching an alias is exactly that call's part; a tensor hook keeps it as view v's part.
  The parameter's own gradient is unchanged (the aliases' gradients flow on into it).
* **Per row** (``attribute={module: dynamics.rows(fn, ["cc", "mlo"])}``) for one call on a batch that stacks
  the views: ``fn(*inputs)`` says which rows of the output belong to which view, and g_v is the gradient that
  flows back from view v's output rows, Jᵀ(m_v ⊙ ∂L/∂y). Masks partition the rows, so Σ_v g_v = g exactly.
  Inside the module rows can interact (BatchNorm's batch statistics in training): that influence is
  attributed to the view whose outputs carry it. Costs one extra backward pass of the module per view.

Parts: on recorded steps only, each view's part of each shared tensor is the gradient tensor autograd hands to
the hook, kept by reference until the step is measured: no copy. That is safe because the alias's backward
(``sum_to`` of an equal shape) passes the very tensor on, and autograd neither steals nor modifies in place a
gradient that someone else holds (``view_as`` would pass a view, which ``AccumulateGrad`` may steal into
``p.grad``, where clipping then changes it). A part is written only once it is the recorder's own: a second
part of a view (micro-batches) is added out of place first, and under a GradScaler the first part is the
gradient times 1/scale (on the device). Parts are unscaled, in the parameters' dtype.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import nn

from ..schema import ATTRIBUTION, ATTRIBUTION_ROWS, BUILTIN_TABLES
from . import distributed, frames, kernels, recompute
from .attribution_spec import current_view, row_mask, rows, views_of
from .quantity import Binding, Frames, Quantity

if TYPE_CHECKING:
    from .guard import HookGuard
    from .quantity import Flushed, LossScale, RecordedStep

@dataclass
class _Target:
    module: nn.Module
    order: Sequence[str] | None       # per-call: views in call order within one forward pass
    by_rows: rows | None
    entries: list[tuple[nn.Module, str, int]]  # (owning submodule, attribute name, index in shared list)
    positions: list[int]                       # the distinct shared-list indices among the entries
    name: str = ""                             # its name in the model (for messages)
    calls: int = 0                             # calls in the current forward pass (given a view in order)
    grad_calls: int = 0                        # of them, calls with autograd (outside a recomputation)
    in_call: bool = False                      # while the module's own forward runs
    swapped: bool = False                      # while a call runs with aliases in place of the parameters
    rows_call: tuple | None = None             # while a per-row call runs: its (args, kwargs)


class SharedAttribution:
    """Installs the hooks for every attributed module and keeps each view's gradient parts of a step. Active
    (aliases swapped in, parts collected) while ``recording`` is set and the recorder is not running autograd
    itself."""

    def __init__(self, spec: Mapping[nn.Module, Sequence[str] | rows], params: Sequence[nn.Parameter],
                 views: Sequence[str], guard: "HookGuard", loss_scale: "LossScale",
                 names: Mapping[int, str] | None = None) -> None:
        self.params = list(params)               # the shared parameters (recorded tensors), in record order
        self.views = list(views)
        self.recording = False                   # the current step is recorded (set at each forward pass)
        self._guard, self._loss_scale = guard, loss_scale
        self._position = {id(p): i for i, p in enumerate(self.params)}
        self.held: dict[str, list[torch.Tensor | None]] | None = None  # per view and tensor: this step's part
        self._own: dict[str, list[bool]] = {}    # per view and tensor: the part is ours (made here), not autograd's
        self._inv: torch.Tensor | bool | None = None  # cached 1/loss scale of this step (False: no scaler)
        self.unattributed_calls = 0              # calls that matched no view (reported in the metadata)
        self._handles: list = []
        self._guarded_add = guard.wrap(self._add)  # wrapped once: every alias's gradient hook calls it
        self._deferred = recompute.DeferredCalls()  # calls without autograd, for a checkpoint's recomputation
        names = names or {}
        self._targets = [self._target(module, how, names.get(id(module), type(module).__name__))
                         for module, how in spec.items()]
        for t in self._targets:
            self._handles.append(t.module.register_forward_pre_hook(guard.wrap(self._make_pre(t), no_grad=False),
                                                                    with_kwargs=True))
            self._handles.append(t.module.register_forward_hook(  # the parameters go back even after a failure
                guard.wrap(self._make_post(t), no_grad=False, always=True), with_kwargs=True, always_call=True))
            if isinstance(t.module, nn.Sequential):  # checkpoint_sequential calls its children, not it
                for child in t.module.children():
                    self._handles.append(child.register_forward_pre_hook(guard.wrap(self._make_child_pre(t),
                                                                                    no_grad=False)))

    def _target(self, module: nn.Module, how, label: str) -> _Target:
        entries = []
        for sub in module.modules():
            for name, p in sub._parameters.items():
                if p is not None and id(p) in self._position:
                    entries.append((sub, name, self._position[id(p)]))
        positions = sorted({position for _, _, position in entries})
        if isinstance(how, rows):
            return _Target(module, None, how, entries, positions, label)
        return _Target(module, list(how), None, entries, positions, label)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.release()

    # -------------------------------------------------------------------------------------------- parts
    def reset(self) -> None:
        """Start a new optimizer step: no part has arrived."""
        self.held = {v: [None] * len(self.params) for v in self.views}
        self._own = {v: [False] * len(self.params) for v in self.views}
        self._inv = None

    def release(self) -> None:
        """Drop the step's parts (the memory goes back as soon as the measurement has read them)."""
        self.held = None

    def parts(self) -> list[list[torch.Tensor]]:
        """Each view's parts, in view order, complete for this step (zeros where no part arrived): to be read,
        never written (some are autograd's own tensors)."""
        return [[torch.zeros_like(p) if part is None else part for p, part in zip(self.params, self.held[v])]
                for v in self.views]

    def _add(self, view_name: str, position: int, grad: torch.Tensor) -> None:
        if self.held is None:
            self.reset()
        if self._inv is None:  # 1/loss scale, once per step (the GradScaler changes it only after the step)
            inv = self._loss_scale.inverse()
            self._inv = False if inv is None else inv
        held, own = self.held[view_name], self._own[view_name]
        part, inv = held[position], None if self._inv is False else self._inv.to(grad.dtype)
        if part is None:  # the step's first part: autograd's tensor itself, or unscaled into a new one
            held[position] = grad if inv is None else grad * inv
            own[position] = inv is not None
        elif own[position]:  # a later part (micro-batches) into the recorder's own tensor
            if inv is None:
                part.add_(grad)
            else:
                part.addcmul_(grad, inv)
        else:  # never write into autograd's tensor: the sum is a new one
            held[position] = part + grad if inv is None else torch.addcmul(part, grad, inv)
            own[position] = True

    # ------------------------------------------------------------------------------------------- hooks
    def new_pass(self) -> None:
        """A forward pass of the whole model begins: call order counts from the first view again."""
        for t in self._targets:
            t.calls = t.grad_calls = 0
        self._deferred.clear()

    def _view_of_call(self, t: _Target) -> str | None:
        explicit = current_view()
        if explicit is not None:
            return explicit if explicit in self.views else None
        k, t.calls = t.calls, t.calls + 1
        return t.order[k] if t.order is not None and k < len(t.order) else None

    def _make_pre(self, t: _Target):
        def pre(module, args, kwargs):
            t.in_call = True
            if not self.recording or self._guard.quiet:
                return None
            view_name = self._view_of_recorded_call(t, args, kwargs)
            if view_name is False:  # nothing to attribute in this call
                return None
            if view_name is None:
                self.unattributed_calls += 1
                return None
            aliases: dict[int, torch.Tensor] = {}
            for sub, name, position in t.entries:
                alias = aliases.get(position)
                if alias is None:
                    original = self.params[position]
                    alias = original.expand_as(original)
                    alias.register_hook(functools.partial(self._guarded_add, view_name, position))
                    aliases[position] = alias
                sub._parameters[name] = alias
            t.swapped = True
            return None
        return pre

    def _view_of_recorded_call(self, t: _Target, args: tuple, kwargs: Mapping) -> str | None | bool:
        """The view of a call on a recorded step (None: no view), or False when this call carries no gradient
        to attribute (see :mod:`dynamics.record.recompute`); a per-row call is set up here (False)."""
        if not torch.is_grad_enabled():  # a reentrant checkpoint's first pass (or an evaluation): remember it
            if not recompute.in_backward():
                self._deferred.note(id(t), args, kwargs, None if t.by_rows is not None else self._view_of_call(t))
            return False
        if recompute.in_backward():  # a checkpoint's recomputation
            found, view_name = self._deferred.match(id(t), args, kwargs)
            if not found:
                if t.grad_calls:  # non-reentrant: the forward's own call carries the gradient
                    return False
                raise RuntimeError(recompute.unmatched(t.name))
            if t.by_rows is not None:
                raise RuntimeError(recompute.rows_refused(t.name))
            return view_name
        t.grad_calls += 1
        if t.by_rows is not None:
            t.rows_call = (args, kwargs)
            return False
        return self._view_of_call(t)

    def _make_child_pre(self, t: _Target):
        def pre(module, args):
            if t.in_call or not self.recording or self._guard.quiet:
                return None
            if not torch.is_grad_enabled() or recompute.in_backward():
                raise RuntimeError(recompute.bypassed(t.name))
            return None
        return pre

    def _make_post(self, t: _Target):
        def post(module, args, kwargs, output):
            t.in_call = False
            if t.swapped:  # always put the real parameters back
                for sub, name, position in t.entries:
                    sub._parameters[name] = self.params[position]
                t.swapped = False
            if t.rows_call is not None and self._guard.failure is None and not self._guard.closed:
                call, t.rows_call = t.rows_call, None
                self._split_by_rows(t, call, output)
            return None
        return post

    def _split_by_rows(self, t: _Target, call: tuple, output) -> None:
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            raise TypeError(f"dynamics.rows needs a module returning one tensor that requires grad, "
                            f"got {type(output).__name__}")
        args, kwargs = call
        masks = t.by_rows.fn(*args, **kwargs)
        unknown = [v for v in masks if v not in self.views]
        if unknown:
            raise ValueError(f"dynamics.rows: the row function returned unknown view(s) {unknown}")
        shared = [self.params[position] for position in t.positions]
        positions = t.positions

        nested: list[bool] = []

        def hook(grad_out: torch.Tensor) -> None:
            if nested:  # the pull-backs below start at this same tensor: do not split them again
                return None
            nested.append(True)
            try:
                self._pull_back(output, grad_out, masks, shared, positions)
            finally:
                nested.clear()
            return None
        output.register_hook(self._guard.wrap(hook))

    def _pull_back(self, output: torch.Tensor, grad_out: torch.Tensor, masks: Mapping[str, torch.Tensor],
                   shared: Sequence[torch.Tensor], positions: Sequence[int]) -> None:
        """g_v = Jᵀ(m_v ⊙ ∂L/∂y): one autograd pass through the module per view."""
        for view_name, rows_of_view in masks.items():
            selected = torch.where(row_mask(rows_of_view, grad_out), grad_out, 0.0)
            with self._guard.quietly():
                parts = torch.autograd.grad(output, shared, selected, retain_graph=True, allow_unused=True)
            for position, part in zip(positions, parts):
                if part is not None:
                    self._add(view_name, position, part)


class AttributionPart(Quantity):
    """Shared-weight attribution as a recorded quantity: per recorded step, per view and shared tensor,
    ‖g_v‖², g_v·Δθ and g_v·(g − g_v) into its own buffer ``[views, 3, shared]`` per row (under DDP the
    per-process parts are first averaged across processes, as DDP averages the gradient). ``spec``: the
    resolved ``attribute=`` (module → views or rows); ``indices``: the shared tensors' positions among the
    recorded tensors."""

    tables = (BUILTIN_TABLES[ATTRIBUTION],)
    watches_forward = True

    def __init__(self, spec: Mapping[nn.Module, Sequence[str] | rows], indices: Sequence[int]) -> None:
        self._spec, self._indices = spec, list(indices)
        self._views = list(dict.fromkeys(v for how in spec.values() for v in views_of(how)))

    def bind(self, binding: Binding) -> None:
        super().bind(binding)
        tensors = binding.tensors
        self._shared = SharedAttribution(self._spec, [tensors.params[i] for i in self._indices], self._views,
                                         binding.guard, binding.loss_scale, binding.module_names)
        self._layout, self._dtype, self._notes = tensors.layout, tensors.dtype, binding.notes
        self._buffer = tensors.buffer(binding.rows, len(self._views), len(ATTRIBUTION_ROWS), len(self._indices))
        local = tensors.local_params()  # the per-view sums, made here: never in the hot path
        self._sums = kernels.PartSums([local[i] for i in self._indices], len(self._views), tensors.dtype)

    def on_forward(self, *, recording: bool, new_step: bool) -> None:
        """A new step's first forward pass starts its parts; call order counts from the first view again."""
        if new_step and recording:
            self._shared.reset()
        self._shared.recording = recording
        self._shared.new_pass()

    def on_step_end(self, step: "RecordedStep") -> None:
        self._measure(step.row, [step.minus_delta[i] for i in self._indices])

    def on_skipped(self, index: int, row: int) -> None:
        self._measure(row, None)

    def _measure(self, row: int, minus_delta: list[torch.Tensor] | None) -> None:
        out = self._buffer[row]
        if self._shared.held is None:  # the shared module never ran with gradients this step
            out.zero_()
            return
        parts = self._shared.parts()
        parts = distributed.average_over_replicas(parts, self._layout)
        out.copy_(self._sums(parts, minus_delta))
        self._shared.release()

    def take(self, flushed: "Flushed") -> "Frames":
        parts = self._buffer.take(len(flushed.steps))
        for step in flushed.steps[frames.unattributed_rows(flushed.values, parts, self._indices)]:
            self._notes.add("part of a shared tensor's gradient came from outside the attributed calls (the "
                            "tensor is also used elsewhere): the views' parts do not add up to its total", int(step))
        return Frames({ATTRIBUTION: frames.attribution_frame(flushed.steps, parts, self._views, self._indices)})

    def close(self, step: int) -> None:
        self._shared.remove()
        if self._shared.unattributed_calls:
            self._notes.add(f"{self._shared.unattributed_calls} calls of an attributed module matched no view "
                            f"(past the listed call order, or in dynamics.view of another name): their gradient "
                            f"is in the tensor's total but in no view's part", step)
