"""``attach()`` and the :class:`Recorder` it returns: hooks on a model and its optimizer that record per-tensor
training quantities.

The recorder is a small orchestrator of parts with one job each: the :class:`~.tracker.StepTracker` knows which
optimizer step is open and whether it was skipped; :class:`~.measurements.StepMeasurements` measures the
per-tensor quantities of a step into a device buffer; the probe, shared-weight attribution and the user's
``parts`` are :class:`~.quantity.Quantity` plug-ins called at fixed points of each step; :class:`~.guard.HookGuard` keeps every
failure out of the training loop; :mod:`.runs` writes the flushed rows. Nothing here moves data to the host
between flushes.
"""
from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ..schema import SHARED, TRAINING_RAISED
from . import closures, distributed, logs, misuse, registry, runs, schedules, unsupported
from . import probe as probing
from .attribution import AttributionPart
from .attribution_spec import group_label, resolve_attribution, rows, views_of
from .guard import HookGuard, Notes
from .measurements import StepMeasurements
from .options import RecordingOptions, RunSpec
from .quantity import Binding, LossScale, Quantity, RecordedStep, RecordedTensors, StepRow
from .tracker import BackwardHooks, StepTracker
from .views import ViewAssignment, ViewSpec, resolve_views

__all__ = ["attach", "Recorder", "InactiveRecorder"]


def _learning_rates(optimizer: torch.optim.Optimizer) -> list:
    """Each group's learning rate now; a tensor lr is copied on the device and read at the flush."""
    return [g["lr"].detach().clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in optimizer.param_groups]


class InactiveRecorder:
    """What ``attach`` returns on the processes other than rank 0 of a DistributedDataParallel run without
    attribution: after the all-reduce every process holds the same gradients and parameters, so rank 0 records
    them once (see :mod:`dynamics.record.distributed`)."""

    def __init__(self, assignment: ViewAssignment) -> None:
        self.assignment, self.run_dir = assignment, None

    def __enter__(self) -> "InactiveRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        return None

    def log(self, **scalars: float | torch.Tensor) -> None:
        """Nothing is recorded on this process."""

    def close(self) -> None:
        """Nothing to flush on this process."""

    def coverage(self) -> pd.DataFrame:
        return self.assignment.coverage()


class Recorder:
    """The handle ``attach`` returns: owns every hook it made; ``close()`` flushes and removes them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, assignment: ViewAssignment,
                 run: runs.OpenRun, options: RecordingOptions, layout: distributed.Layout = distributed.Layout()
                 ) -> None:
        self.model, self.optimizer, self.assignment = model, optimizer, assignment
        self.run_dir, self.meta, self._run, self._options = run.run_dir, run.meta, run, options
        tensors = RecordedTensors.of(assignment.tensors, layout)
        self.device = tensors.device
        self._tracker = StepTracker(tensors, run.start_step, options.schedule)
        self._guard, self._notes, self._logs = HookGuard(lambda: self._tracker.step), Notes(), logs.ScalarLog()
        scale = LossScale(options.scaler)
        self._measure = StepMeasurements(tensors, scale, options.flush_every, self._notes)
        self._rows: list[StepRow] = []             # one per buffer row in use
        self._pending: RecordedStep | None = None  # the step between the pre- and the post-step hook
        self._parts: list[Quantity] = []
        self._handles: list = []
        self._closed = False
        self._close_errors: list[str] = []
        self._groups = misuse.GroupWatch(model, optimizer, self._notes)
        guard = self._guard.wrap
        self._flush_in_loop = guard(self._flush)  # log()'s flush: a failure stops recording, never raises
        try:
            binding = Binding(tensors, distributed.unwrapped(model), self._guard, self._notes, scale,
                              options.flush_every, self._measure.dots, {id(m): n for n, m in model.named_modules()})
            for quantity in options.quantities:
                quantity.bind(binding)
                self._parts.append(quantity)  # bound: closed with the recorder
            if any(part.watches_forward for part in self._parts):
                self._handles.append(model.register_forward_pre_hook(guard(self._on_forward, no_grad=False),
                                                                     prepend=True))
            self._after_closure = guard(self._closure_returned)  # wrapped once: every closure step calls it
            self._handles.append(optimizer.register_step_pre_hook(guard(self._pre_step, returns=True)))
            self._handles.append(optimizer.register_step_post_hook(guard(self._post_step)))
            backward = BackwardHooks(self._guard, self._tracker, self._backward_began, self._backward_ended)
            self._handles += backward.install(model, tensors)
        except BaseException:
            self._remove_hooks()
            raise
        registry.register(self)

    # ----------------------------------------------------------------------------------------- life cycle
    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.meta.setdefault("errors", []).append(f"{TRAINING_RAISED} {exc_type.__name__}: {exc}")
        self.close()

    def close(self) -> None:
        """Flush what is buffered, write the final metadata and remove every hook. Safe to call twice, in any
        grad mode. Never raises for the recorder's own failures (a full disk included): it keeps what it can,
        warns, and writes the error to ``meta.json["errors"]``; an interrupt still propagates."""
        if self._closed:
            return
        self._closed = self._guard.closed = True
        try:
            with torch.no_grad():
                if not self._guard.failure:
                    self._at_close(self._close_skipped)
                self._at_close(self._run.retry)  # flushes that failed to commit: the disk may have room now
                self._at_close(self._flush)      # also after a failure: the steps completed before it are kept
        finally:
            self._at_close(self._remove_hooks)
            registry.unregister(self)
            self._measure.release()
            self.meta["status"] = "closed"
            self.meta["next_step"] = self._tracker.step
            self.meta["closed"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            self.meta["notes"] = self._notes.as_dict()
            self._groups.describe(self.meta)
            if self._guard.failure:
                self.meta.setdefault("errors", []).append(self._guard.failure)
            self.meta.setdefault("errors", []).extend(self._close_errors)
            self._at_close(self._run.close)  # compacts, writes meta.json, releases the run's lock

    def _at_close(self, action) -> None:
        """Run one step of closing; a failure is kept for meta.json and warned about, never raised."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - close() must not raise for the recorder's own failures
            text = f"at close: {type(exc).__name__}: {exc}"
            self._close_errors.append(text)
            warnings.warn(f"dynamics: {self.run_dir}: {text}", RuntimeWarning, stacklevel=3)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for part in self._parts:
            part.close(self._tracker.step)
            part.unbind()

    def coverage(self) -> pd.DataFrame:
        """Every parameter with its view, layer, depth, numel and whether it is recorded or frozen."""
        return self.assignment.coverage()

    @property
    def step(self) -> int:
        """Index of the next optimizer step attempt (steps count from 0; skipped attempts count)."""
        return self._tracker.step

    def log(self, **scalars: float | torch.Tensor) -> None:
        """Attach scalars (floats or one-element tensors, kept on the device) to the current step.

        The current step is the one whose backward pass has run and whose optimizer step has not, or else the
        one just taken. Several values for one step (micro-batches) are averaged.
        """
        if self._closed:
            raise RuntimeError(f"recorder for {self.run_dir} is closed; log() after close() is lost")
        checked = logs.checked(scalars)
        if self._guard.failure:  # recording stopped (it was warned about): nothing more is kept
            return
        self._logs.add(self._log_step(), checked)
        if self._logs.full:
            self._flush_in_loop()

    # ------------------------------------------------------------------------------ events of a step
    def _backward_began(self) -> None:
        """First gradient of a backward pass: close a step that was skipped; this pass opens (or continues)
        the current one."""
        self._tracker.in_backward = True
        self._close_skipped()
        self._tracker.backward_began()

    def _backward_ended(self) -> None:
        if self._tracker.recording:
            self._measure.at_backward_end()
        self._tracker.backward_ended()

    def _on_forward(self, module, args) -> None:
        """A forward pass of the model (parts that watch them): close a skipped step first."""
        if self._guard.quiet or not torch.is_grad_enabled():
            return
        self._close_skipped()
        new_step, recording = not self._tracker.open, self._tracker.recording
        for part in self._parts:
            part.on_forward(recording=recording, new_step=new_step)

    def _pre_step(self, optimizer, args, kwargs) -> tuple[tuple, dict] | None:
        """θ_t and the gradient the optimizer will use; with a closure, the gradient once the closure ran
        (returns the step's arguments with the closure wrapped)."""
        tracker = self._tracker
        tracker.in_backward, tracker.in_step = False, True
        self._pending = None
        self._groups.check(tracker.step)
        if not tracker.recording:
            return None
        closure = closures.closure_of(args, kwargs)
        gradient = None if closure is not None else self._tracker.gradient_state()
        step = self._measure.before_step(tracker.step, len(self._rows), _learning_rates(optimizer),
                                         gradient=gradient)
        for part in self._parts:
            part.on_step_start(step)
        self._pending = step
        if closure is None:
            return None
        return closures.with_closure(args, kwargs, closures.followed_by(closure, self._after_closure,
                                                                              self._closure_failed))

    def _closure_returned(self) -> None:
        """The closure of a recorded step has run (its backward, any clipping inside it): measure now."""
        step = self._pending
        if step is None:
            return
        if step.grads is not None:
            self._notes.add("the closure was called more than once in one optimizer step: the gradient after "
                            "its first call is recorded", step.index, warn=True)
            return
        self._tracker.in_backward = False
        opened, changed = self._tracker.gradient_state()
        self._measure.gradient(step, opened=opened, changed=changed)

    def _closure_failed(self) -> None:
        """The closure raised: its exception leaves ``step()``, so this step ends without a post-step hook."""
        self._tracker.in_step, self._pending = False, None

    def _post_step(self, optimizer, args, kwargs) -> None:
        self._tracker.in_step = False
        step, self._pending = self._pending, None
        if step is not None:
            if step.grads is None:  # given a closure that the optimizer did not call: its gradient is the one used
                self._notes.add("the closure given to optimizer.step() was not called: the gradient was measured "
                                "after the step", step.index)
                opened, changed = self._tracker.gradient_state()
                self._measure.gradient(step, opened=opened, changed=changed)
            for part in self._parts:
                part.on_update(step)
            self._measure.after_step(step)
            for part in self._parts:
                part.on_step_end(step)
            self._rows.append(step.row_record())
        self._end_step()

    def _close_skipped(self) -> None:
        """The open step ended without an optimizer step: record it (if scheduled) as skipped, without lca."""
        tracker = self._tracker
        if not tracker.unstepped():
            return
        with torch.no_grad():  # also when closed from a forward hook or close() in grad mode
            self._record_skipped()
        self._end_step()

    def _record_skipped(self) -> None:
        tracker = self._tracker
        if tracker.recording:
            row = len(self._rows)
            measured = self._measure.skipped(row)
            for part in self._parts:
                part.on_skipped(tracker.step, row)
            self._rows.append(StepRow(tracker.step, True, False, measured, _learning_rates(self.optimizer),
                                      tracker.has_grad()))

    def _end_step(self) -> None:
        self._tracker.advance()
        self._measure.forget_backward()
        if len(self._rows) >= self._options.flush_every:
            self._flush()

    def _log_step(self) -> int:
        """The step log() attaches to: the open one, or else the one just taken."""
        tracker = self._tracker
        return tracker.step if (tracker.open or tracker.step == 0) else tracker.step - 1

    def _flush(self) -> None:
        """Write the buffered rows and logs; the current step's logs wait for the next flush unless closing
        (it may still receive values, and each step's scalars are written once, as one mean)."""
        try:
            with torch.no_grad():  # whatever the caller's grad mode
                keep = None if self._closed else self._log_step()
                runs.flush(self._run, self._rows, self._measure, self._parts, self._logs.take(keep))
        finally:
            self._rows = []  # taken from the device buffer either way (a failed commit keeps its parts)


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, views: ViewSpec, *, out: str | Path,
           shared_name: str = SHARED, every: schedules.Every = 1, flush_every: int = 100,
           scaler: Any = None, config: Mapping | None = None, seed: int | None = None,
           condition: str | None = None, resume: bool = False,
           attribute: Mapping[nn.Module | str, Sequence[str] | rows] | None = None,
           probe: probing.ProbeBatch | None = None, probe_every: int = 50,
           parts: Sequence[Quantity] = ()) -> Recorder | InactiveRecorder:
    """Record per-tensor training quantities of ``model`` at the optimizer steps chosen by ``every``.

    ``optimizer`` may be a trainer's wrapper (Lightning's ``LightningOptimizer``, Accelerate's
    ``AcceleratedOptimizer``): the torch optimizer it holds is recorded; ``optimizer.step(closure)`` is
    recorded as a plain step (see :mod:`dynamics.record.closures`).
    ``views`` assigns parameters to views (see :func:`dynamics.record.views.resolve_views`); ``out`` is the
    run directory (never overwritten: pass ``resume=True`` to append); ``scaler`` is the
    ``torch.amp.GradScaler`` if one is used, so gradients are recorded unscaled; ``config``, ``seed`` and
    ``condition`` go into the metadata (``load_runs`` turns condition and seed into columns). ``attribute``
    splits the gradient of modules shared by views (see :mod:`dynamics.record.attribution`); ``probe`` checks
    lca on a fixed batch every ``probe_every`` steps (see :mod:`dynamics.record.probe`); ``parts`` are further
    recorded quantities (:class:`~dynamics.record.quantity.Quantity` plug-ins, e.g.
    :class:`~dynamics.record.update_alignment.UpdateAlignment`), each read back by ``load_table``. Returns a
    :class:`Recorder`, which is a context manager; ``close()`` flushes and removes every hook. Under
    DistributedDataParallel or ``fully_shard`` call it on every process: rank 0 writes the run (see
    :mod:`dynamics.record.distributed`).
    """
    optimizer, wrappers = unsupported.unwrap_optimizer(optimizer)
    misuse.refuse_second_recorder(model, optimizer)
    unsupported.check_model(model)
    attribute, labelled = resolve_attribution(model, views, attribute or {})
    attributed_views = list(dict.fromkeys(v for how in attribute.values() for v in views_of(how)))
    assignment = resolve_views(model, labelled, shared_name=shared_name, extra_views=attributed_views)
    groups = {group_label(h) for h in attribute.values()}
    attributed = [p.index for p in assignment.params if p.view in groups]
    owned = {p.view for p in assignment.params} | set(attributed_views)
    empty = [v for v in assignment.views if v not in owned]
    if empty:
        raise ValueError(f"view(s) {empty} own no parameter: give them modules or patterns, or attribute= a "
                         f"shared module to them")
    if isinstance(parts, Quantity) or not isinstance(parts, (list, tuple)):
        raise TypeError(f"parts= takes a list of quantities, got {type(parts).__name__}")
    for position, part in enumerate(parts):
        if not isinstance(part, Quantity):
            raise TypeError(f"parts[{position}] must be a dynamics.Quantity, got {type(part).__name__}")
    quantities = [*([AttributionPart(attribute, attributed)] if attribute else []),
                  *([probing.ProbePart(probe, probe_every)] if probe is not None else []), *parts]
    options = RecordingOptions(every, flush_every, scaler, quantities)
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    parameters = [{**info.as_record(), "group": group_of.get(id(t), -1)}
                  for info, t in zip(assignment.params, assignment.tensors)]
    misuse.refuse_foreign_optimizer(optimizer, parameters)  # on every process alike: none waits for another
    layout = distributed.layout_of(model, [p.name for p in assignment.params], assignment.tensors,
                                   attribution=bool(attribute), probe=probe is not None)
    if not layout.records:
        return InactiveRecorder(assignment)
    for quantity in quantities:  # run locally, outside DistributedDataParallel
        quantity.check(distributed.unwrapped(model))
    run, error = runs.OpenRun(), None
    if layout.writes:
        try:
            run = runs.open_run(RunSpec(out, resume, config, seed, condition), options, model, optimizer,
                                assignment, parameters, wrappers)
        except Exception as exc:  # told to the other processes before it is raised, so none waits forever
            error = exc
    try:
        # the other processes measure their part at the same steps as rank 0, which writes the run
        run.start_step = distributed.agree_with_writer(run.start_step, error, layout)
        return Recorder(model, optimizer, assignment, run, options, layout)
    except BaseException:
        run.discard()  # a failed attach leaves no run behind: a retry with the same out= may reuse it
        raise
