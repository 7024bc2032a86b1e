"""``attach()``: hooks on a model and its optimizer that record per-tensor training kernels.

How the gradient "the loss actually has" is found (design.md section 3): a tensor hook on every recorded
parameter notices the first gradient of each backward pass and queues a callback that runs when that backward
pass ends. There, after accumulation but before any unscaling or clipping, the callback takes ‖g‖² per tensor
(divided by the GradScaler's scale², when a scaler is given) and remembers each gradient's identity and
version counter. At the optimizer's pre-step hook the gradient the optimizer will use is measured again; if
something changed it in between (AMP unscaling, clipping), the ratio of the two norms is that change. For a
uniform rescaling such as ``clip_grad_norm_`` this gives the clip factor exactly, and ``lca`` is the dot
product with the optimizer's gradient divided by that per-tensor factor, i.e. the unclipped gradient's.

A backward pass whose gradients were reset or changed without an optimizer step in between (the GradScaler
skipped it, or the loop skipped it) closes its step as ``skipped``: step indices count optimizer step attempts.

Nothing here moves data to the host between flushes: quantities are reduced with foreach kernels into one
preallocated device buffer, one row per recorded step, copied to the host every ``flush_every`` rows.
"""
from __future__ import annotations

import contextlib
import functools
import datetime as _dt
import math
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import store
from ..schema import BUFFER_ROWS, GRAD_SQ, LCA, LR_PREFIX, PARAM_SQ, PRE_SQ, RESERVED_SCALARS, RULES, SHARED, UPDATE_SQ, lr_column
from ..store import frames
from . import description, distributed, kernels, registry, schedules
from . import probe as probing
from .attribution import SharedAttribution, group_label, resolve_attribution, rows, views_of
from .views import ViewAssignment, ViewSpec, device_of, resolve_views

__all__ = ["attach", "Recorder", "InactiveRecorder"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_MAX_PENDING_LOGS = 10_000


def _never_compiled(hook: Callable) -> Callable:
    """A hook dynamo must not trace (it runs once per parameter per backward pass): its code is marked to be
    skipped, which costs nothing per call, where this torch offers that; else it is wrapped."""
    skip_code = getattr(getattr(torch._dynamo, "eval_frame", None), "skip_code", None)
    if skip_code is None:
        return torch.compiler.disable(hook)
    skip_code(hook.__code__)
    return hook


def _attributed_views(attribute: Mapping) -> list[str]:
    """The views that attribute= names, in order of first mention."""
    return list(dict.fromkeys(v for how in attribute.values() for v in views_of(how)))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _learning_rates(optimizer: torch.optim.Optimizer) -> list:
    """Each group's learning rate now; a tensor lr is copied on the device and read at the flush."""
    return [g["lr"].detach().clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in optimizer.param_groups]


def _refuse_unsupported(model: nn.Module) -> None:
    """Set-ups whose gradients the recorder would get wrong are refused, not recorded wrongly."""
    for qualified, module in model.named_modules():
        name = type(module).__name__
        if name == "FullyShardedDataParallel":
            raise NotImplementedError(f"dynamics does not support the {name} wrapper (FSDP1), whose flattened "
                                      f"parameters lose the per-tensor boundaries: shard with "
                                      f"torch.distributed.fsdp.fully_shard (FSDP2) instead")
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            raise NotImplementedError(f"dynamics does not support sparse gradients yet: module {qualified!r} "
                                      f"({name}) has sparse=True")


class InactiveRecorder:
    """What ``attach`` returns on the processes other than rank 0 of a DistributedDataParallel run without
    attribution: after the all-reduce every process holds the same gradients and parameters, so rank 0 records
    them once (see :mod:`dynamics.distributed`)."""

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
                 run_dir: Path, *, schedule: schedules.Schedule, flush_every: int, scaler: Any,
                 meta: dict, next_part: dict[str, int], start_step: int,
                 attribute: Mapping | None = None, attributed: Sequence[int] = (),
                 probe: probing.ProbeBatch | None = None, probe_every: int = 50,
                 layout: distributed.Layout = distributed.Layout()) -> None:
        self.model, self.optimizer, self.assignment = model, optimizer, assignment
        self._layout = layout
        self.run_dir, self.meta = run_dir, meta
        self._schedule, self._flush_every = schedule, flush_every
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None  # disabled: no scaling
        self._next_part = dict(next_part)
        self._params: list[nn.Parameter] = assignment.tensors
        self._local: Callable[[torch.Tensor], torch.Tensor] = distributed.local if layout.sharded else _identity
        self._n = len(self._params)
        self.device = device_of(self._params)
        self._dtype = kernels.reduce_dtype(self._params)
        self._zero = torch.zeros(1, device=self.device, dtype=self._dtype)
        self._buffer = self._nan_buffer(flush_every, len(BUFFER_ROWS), self._n)
        self._prev: list[torch.Tensor] | None = None  # θ_t, allocated at the first recorded step
        local = self._local_params()  # the per-tensor dot products, made here: never in the hot path
        self._dots = self._dots_for(local)
        self._part_dots = self._dots_for([local[i] for i in attributed]) if attribute else None
        self._probe, self._probe_every = probe, probe_every
        self._probe_model = distributed.unwrapped(model)  # run locally, outside DistributedDataParallel
        if probe is not None:  # rows: lca by first-order, trapezoid, Simpson; losses before and after
            self._probe_lca = self._nan_buffer(flush_every, len(RULES), self._n)
            self._probe_loss = self._nan_buffer(flush_every, 2)
        # per-step host-side bookkeeping (no device data is read for these)
        self._step = start_step
        self._rows: list[dict] = []            # one per buffer row in use
        self._logs: dict[int, dict[str, list]] = {}
        self._n_logs = 0
        # backward-pass state
        self._in_backward = False
        self._round_open = False
        self._snapshot: list[tuple[weakref.ref, int] | None] = [None] * self._n
        self._bwd_sq: torch.Tensor | None = None
        self._eager = True                     # measure gradients at backward end (see _on_backward_end)
        self._pending: dict | None = None      # the step between pre- and post-hook
        self._closed = False
        self._failed: str | None = None
        self._notes: dict[str, list[int]] = {}
        self._handles: list = []
        self._quiet = 0                        # >0 while the recorder runs autograd itself (probe, rows)
        # hooks and callbacks, each wrapped once (wrapping costs more than a call)
        self._grad_hook = self._make_grad_hook()
        self._after_others = self._guard(self._after_other_callbacks)
        self._at_backward_end = self._guard(self._on_backward_end)
        self._attribution: SharedAttribution | None = None
        try:
            if attribute:
                views = _attributed_views(attribute)
                self._attribution = SharedAttribution(
                    attribute, [self._params[i] for i in attributed], attributed, views,
                    is_active=lambda: not self._quiet and self._schedule(self._step),
                    inv_scale=self._inverse_loss_scale, quietly=self._quietly, guard=self._guard)
                self._attributed_buffer = self._nan_buffer(flush_every, len(views), 3, len(attributed))
                self._handles.append(model.register_forward_pre_hook(self._guard(self._on_forward, no_grad=False)))
            self._handles.append(optimizer.register_step_pre_hook(self._guard(self._pre_step)))
            self._handles.append(optimizer.register_step_post_hook(self._guard(self._post_step)))
            if layout.sharded:  # FSDP computes gradients of unsharded copies: notice the backward at the output
                self._handles.append(model.register_forward_hook(self._guard(self._hook_outputs, no_grad=False)))
            else:
                for p in self._params:
                    self._handles.append(p.register_hook(self._grad_hook))
        except BaseException:
            self._remove_hooks()
            raise
        registry.register(self)

    def _nan_buffer(self, *shape: int) -> torch.Tensor:
        """A preallocated device buffer; NaN marks what a step did not fill."""
        return torch.full(shape, math.nan, device=self.device, dtype=self._dtype)

    # ----------------------------------------------------------------------------------------- life cycle
    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.meta.setdefault("errors", []).append(f"training raised {exc_type.__name__}: {exc}")
        self.close()

    def close(self) -> None:
        """Flush what is buffered, write the final metadata and remove every hook. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed:
                self._end_open_round()
            self._flush()  # also after a failure: the steps completed before it are kept
            if self._attribution is not None and self._attribution.unattributed_calls:
                self._note(f"{self._attribution.unattributed_calls} calls of an attributed module matched no view "
                           f"(past the listed call order, or in dynamics.view of another name): their gradient "
                           f"is in the tensor's total but in no view's part")
        finally:
            self._remove_hooks()
            registry.unregister(self)
            self._prev = None
            self.meta["status"] = "closed"
            self.meta["next_step"] = self._step
            self.meta["closed"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            self.meta["notes"] = {k: v for k, v in self._notes.items()}
            if self._failed:
                self.meta.setdefault("errors", []).append(self._failed)
            if self._layout.writes:
                store.write_meta(self.run_dir, self.meta)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._attribution is not None:
            self._attribution.remove()

    def coverage(self) -> pd.DataFrame:
        """Every parameter with its view, layer, depth, numel and whether it is recorded or frozen."""
        return self.assignment.coverage()

    @property
    def step(self) -> int:
        """Index of the next optimizer step attempt (steps count from 0; skipped attempts count)."""
        return self._step

    # ------------------------------------------------------------------------------------------ user API
    def log(self, **scalars: float | torch.Tensor) -> None:
        """Attach scalars (floats or one-element tensors, kept on the device) to the current step.

        The current step is the one whose backward pass has run and whose optimizer step has not, or else the
        one just taken. Several values for one step (micro-batches) are averaged.
        """
        if self._closed:
            raise RuntimeError(f"recorder for {self.run_dir} is closed; log() after close() is lost")
        step = self._step if (self._round_open or self._step == 0) else self._step - 1
        checked = {}
        for name, value in scalars.items():
            if name in RESERVED_SCALARS or name.startswith(LR_PREFIX):
                raise ValueError(f"log(): scalar name {name!r} is reserved; choose another name")
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"log(): scalar {name!r} has {value.numel()} elements; pass one value")
                value = value.detach().reshape(())
            elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ValueError(f"log(): scalar {name!r} must be a number or a one-element tensor, "
                                 f"got {type(value).__name__}")
            checked[name] = value
        for name, value in checked.items():
            self._logs.setdefault(step, {}).setdefault(name, []).append(value)
            self._n_logs += 1
        if self._n_logs >= _MAX_PENDING_LOGS:
            self._flush()

    # ------------------------------------------------------------------------------------------- hooks
    def _guard(self, hook: Callable, *, no_grad: bool = True) -> Callable:
        """Never raise inside the user's training step: a failure stops recording and is reported. The hook
        always runs eagerly: where the user compiles backward() or optimizer.step(), dynamo leaves it alone
        (its host-side bookkeeping would break the graph and recompile every step)."""
        def guarded(*args, **kwargs):
            if self._failed or self._closed:
                return None
            try:
                with torch.no_grad() if no_grad else contextlib.nullcontext():
                    hook(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported, never swallowed silently
                self._failed = f"recording stopped at step {self._step}: {type(exc).__name__}: {exc}"
                warnings.warn(f"dynamics: {self._failed}", RuntimeWarning, stacklevel=2)
            return None
        return torch.compiler.disable(guarded)

    def _make_grad_hook(self) -> Callable:
        guarded = self._guard(self._on_first_grad)

        def hook(grad: torch.Tensor) -> None:
            if not self._in_backward and not self._quiet:
                guarded()
            return None
        return _never_compiled(hook)

    @contextlib.contextmanager
    def _quietly(self):
        """While the recorder itself runs autograd, its own hooks stay out of the way."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _hook_outputs(self, module, args, output) -> None:
        """Sharded parameters: the first gradient of a backward pass is the model output's."""
        if self._quiet or not torch.is_grad_enabled():
            return
        for leaf in torch.utils._pytree.tree_leaves(output):
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                leaf.register_hook(self._grad_hook)

    def _on_forward(self, module, args) -> None:
        """A forward pass of the model (attribution only): close a skipped step, start a new one's buffers."""
        if self._quiet or not torch.is_grad_enabled():
            return
        self._end_open_round()
        if not self._round_open and self._schedule(self._step):
            with torch.no_grad():
                self._attribution.reset()
        self._attribution.new_pass()

    def _on_first_grad(self) -> None:
        """First gradient of a backward pass: close a step that was skipped, then wait for the pass's end."""
        self._in_backward = True
        self._end_open_round()
        self._round_open = True
        torch.autograd.Variable._execution_engine.queue_callback(self._after_others)

    def _after_other_callbacks(self) -> None:
        """Callbacks run in order and may queue more: queueing the measurement again puts it after those
        queued later in the pass, such as DistributedDataParallel's, which writes the averaged gradients."""
        torch.autograd.Variable._execution_engine.queue_callback(self._at_backward_end)

    def _on_backward_end(self) -> None:
        """All gradients of this pass are accumulated: remember them, and measure them now if they may be
        rescaled or clipped before the step (``_eager``: the loop did so before, or a GradScaler is given)."""
        self._in_backward = False
        if self._eager and self._schedule(self._step):
            sq = kernels.sq_norms(self._grads(), self._dtype)
            scale = self._loss_scale()
            self._bwd_sq = sq if scale is None else sq / scale.to(sq.dtype).square()
        self._snapshot = [None if (g := p.grad) is None else (weakref.ref(g), self._local(g)._version)
                          for p in self._params]

    def _pre_step(self, optimizer, args, kwargs) -> None:
        self._in_backward = False
        if not self._schedule(self._step):
            self._pending = None
            return
        row = len(self._rows)
        grads = self._grads()
        buffer = self._buffer[row]
        # DTensor gradients changed in place (clipping, unscaling) keep their version counters, so a sharded
        # gradient counts as changed: the ratio of its two measurements is then exactly 1 where it was not
        changed = self._round_open and (self._layout.sharded or self._changed_since_backward())
        params = self._local_params()
        squares = kernels.sq_norms([*grads, *params], self._dtype)  # one reduction for both: fewer launches
        buffer[PRE_SQ].copy_(squares[:self._n])
        buffer[PARAM_SQ].copy_(squares[self._n:])
        if self._round_open and not changed:  # the optimizer sees the backward's gradient untouched
            buffer[GRAD_SQ].copy_(buffer[PRE_SQ])
            self._eager = self._scaler is not None
        elif changed and self._bwd_sq is not None:
            buffer[GRAD_SQ].copy_(self._bwd_sq)
        else:  # no backward pass seen, or a change the recorder did not expect: use the step's gradient
            buffer[GRAD_SQ].copy_(buffer[PRE_SQ])
            self._note("gradient taken at the optimizer step: no backward pass seen, or the gradients were "
                       "changed after it at a step where no change was expected (clipping or scaling "
                       "began mid-run); grad_sq and lca use the optimizer's gradient" if self._round_open
                       else "gradient taken at the optimizer step (no backward pass seen)")
            changed, self._eager = False, True
        if self._prev is None:
            # low-precision tensors keep θ_t in float32, where θ_t − θ_{t+1} of two of them is exact
            self._prev = [torch.empty_like(p, dtype=torch.float32 if p.dtype in _LOW_PRECISION else p.dtype)
                          for p in params]
        if self.device.type == "cpu":  # a plain loop: foreach copy is slower than it on CPU
            for saved, p in zip(self._prev, params):
                saved.copy_(p)
        else:
            torch._foreach_copy_(self._prev, params)
        if self._probe is not None and self._step % self._probe_every == 0:
            with self._quietly(), probing.preserved(self._probe_model, self._probe.train_mode):
                loss, g0 = probing.loss_and_grads(self._probe_model, self._probe, self._params)
            self._probe_loss[row, 0].copy_(loss)
            probe_start = g0
        else:
            probe_start = None
        self._pending = {"row": row, "grads": grads, "params": params, "changed": changed, "probe": probe_start,
                         "versions": [g._version for g in grads], "lrs": _learning_rates(optimizer),
                         "has_grad": np.fromiter((g is not self._zero for g in grads), bool, self._n)}

    def _post_step(self, optimizer, args, kwargs) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            row, grads, buffer = pending["row"], pending["grads"], self._buffer[pending["row"]]
            if pending["probe"] is not None:
                g_half, g1 = self._probe_path(row)
            torch._foreach_sub_(self._prev, pending["params"])  # θ_t − θ_{t+1} = −Δθ
            if pending["probe"] is not None:
                ends = [self._dots(g, self._prev).neg_() for g in (pending["probe"], g_half, g1)]
                self._probe_lca[row].copy_(probing.path_lca(*ends))
            buffer[UPDATE_SQ].copy_(kernels.sq_norms(self._prev, self._dtype))
            # a tensor without a gradient (None here) has lca 0
            buffer[LCA].copy_(self._dots([None if g is self._zero else g for g in grads], self._prev).neg_())
            distributed.sum_over_shards(buffer, self._layout)  # every sum is whole before it is used
            if pending["changed"]:  # undo a per-tensor rescaling (clipping) of the gradient
                ratio = buffer[GRAD_SQ] / buffer[PRE_SQ]
                buffer[LCA].mul_(torch.where(buffer[PRE_SQ] > 0, ratio, 0.0).sqrt())
            if self._attribution is not None:
                self._attribute(row, lca_too=True)
            if any(g._version != v for g, v in zip(grads, pending["versions"])):
                buffer[LCA].fill_(math.nan)
                self._note("lca not available: the optimizer changed the gradients in place")
            self._rows.append({"step": self._step, "skipped": False, "changed": pending["changed"], "measured": True,
                               "lrs": pending["lrs"], "has_grad": pending["has_grad"]})
        self._end_round()

    # ------------------------------------------------------------------------------------------ helpers
    def _grads(self) -> list[torch.Tensor]:
        """This process's part of each gradient (a zero placeholder where there is none)."""
        return [self._zero if p.grad is None else self._local(p.grad) for p in self._params]

    def _local_params(self) -> list[torch.Tensor]:
        """This process's part of each recorded tensor."""
        return [self._local(p) for p in self._params]

    def _probe_path(self, row: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Probe gradients at θ_{t+1} and at the midpoint (parameters put back bit for bit afterwards)."""
        params = self._params
        with self._quietly(), probing.preserved(self._probe_model, self._probe.train_mode):
            loss, g1 = probing.loss_and_grads(self._probe_model, self._probe, params)
            self._probe_loss[row, 1].copy_(loss)
            after = [p.detach().clone() for p in params]
            try:
                for p, start, end in zip(params, self._prev, after):
                    p.copy_(torch.lerp(start, end.to(start.dtype), 0.5))
                _, g_half = probing.loss_and_grads(self._probe_model, self._probe, params)
            finally:
                for p, end in zip(params, after):
                    p.copy_(end)
        return g_half, g1

    def _attribute(self, row: int, *, lca_too: bool) -> None:
        """Per-view ‖g_v‖², g_v·Δθ and g_v·(g − g_v) of the shared tensors into the attribution buffer."""
        attribution, out = self._attribution, self._attributed_buffer[row]
        if attribution.buffers is None:  # the shared module never ran with gradients this step
            out.zero_()
            return
        parts = [attribution.buffers[v] for v in attribution.views]
        every_part = [t for part in parts for t in part]
        distributed.average_over_replicas(every_part, self._layout)
        out[:, 0].copy_(kernels.sq_norms(every_part, self._dtype).view(len(parts), -1))
        out[:, 2].zero_()
        minus_delta = [self._prev[i] for i in attribution.indices] if lca_too else None
        if minus_delta is None:  # a skipped step: no update
            out[:, 1].fill_(math.nan)
        for a, part in enumerate(parts):
            if minus_delta is not None:
                out[a, 1].copy_(self._part_dots(part, minus_delta).neg_())
            for b in range(a + 1, len(parts)):
                cross = self._part_dots(part, parts[b])
                out[a, 2].add_(cross)
                out[b, 2].add_(cross)

    def _dots_for(self, like: Sequence[torch.Tensor]) -> Callable:
        """Per-tensor dot products: one launch per tensor costs more than the work on a GPU, so batch them there."""
        return kernels.BatchedDots(like, self._dtype) if self.device.type == "cuda" else functools.partial(kernels.dots, dtype=self._dtype)

    def _inverse_loss_scale(self) -> torch.Tensor | None:
        scale = self._loss_scale()
        return None if scale is None else scale.reciprocal()

    def _loss_scale(self) -> torch.Tensor | None:
        return None if self._scaler is None else getattr(self._scaler, "_scale", None)

    def _changed_since_backward(self) -> bool:
        """Were the gradients reset, replaced or modified in place since the last backward pass ended?"""
        for p, snap in zip(self._params, self._snapshot):
            grad = p.grad
            if snap is None:
                if grad is not None:
                    return True
            elif grad is None or snap[0]() is not grad or self._local(grad)._version != snap[1]:
                return True
        return False

    def _record_skipped(self) -> None:
        """The open step ended without an optimizer step: record it (if scheduled) as skipped, without lca."""
        if self._schedule(self._step):
            row = len(self._rows)
            buffer = self._buffer[row]
            buffer.fill_(math.nan)
            if self._bwd_sq is not None:
                buffer[GRAD_SQ].copy_(self._bwd_sq)
            buffer[PARAM_SQ].copy_(kernels.sq_norms(self._local_params(), self._dtype))
            distributed.sum_over_shards(buffer, self._layout)
            if self._attribution is not None:
                self._attribute(row, lca_too=False)
            self._rows.append({"step": self._step, "skipped": True, "changed": False, "measured": self._bwd_sq is not None,
                               "lrs": _learning_rates(self.optimizer),
                               "has_grad": np.array([s is not None for s in self._snapshot], bool)})
        self._end_round()

    def _end_open_round(self) -> None:
        """A step whose gradients were reset or changed without an optimizer step ends here, as skipped."""
        if self._round_open and self._changed_since_backward():
            self._record_skipped()

    def _end_round(self) -> None:
        self._step += 1
        self._round_open = False
        self._bwd_sq = None
        if len(self._rows) >= self._flush_every:
            self._flush()

    def _note(self, text: str, step: int | None = None) -> None:
        """Something the reader of the run must know, with (up to 100 of) the steps it happened at."""
        steps = self._notes.setdefault(text, [])
        if len(steps) < 100:
            steps.append(self._step if step is None else step)

    # -------------------------------------------------------------------------------------------- flush
    def _flush(self) -> None:
        """Copy the buffered rows and logs to the host (one transfer per buffer) and append Parquet parts."""
        n = len(self._rows)
        step_rows: dict[int, dict] = {}
        if n:
            values = self._take(self._buffer, n)
            has_grad = np.stack([r["has_grad"] for r in self._rows])
            steps = np.array([r["step"] for r in self._rows], dtype=np.int64)
            skipped = np.array([r["skipped"] for r in self._rows], dtype=bool)
            measured = np.array([r["measured"] for r in self._rows], dtype=bool)
            self._write("params", frames.param_frame(steps, values, has_grad, skipped, measured))
            if self._attribution is not None:
                parts = self._take(self._attributed_buffer, n)
                for step in steps[frames.unattributed_rows(values, parts, self._attribution.indices)]:
                    self._note("part of a shared tensor's gradient came from outside the attributed calls (the "
                               "tensor is also used elsewhere): the views' parts do not add up to its total",
                               int(step))
                self._write("attribution", frames.attribution_frame(
                    steps, parts, self._attribution.views, self._attribution.indices))
            probe_rows: dict[int, dict] = {}
            if self._probe is not None:
                part, probe_rows = frames.probe_frame(steps, self._take(self._probe_lca, n),
                                                      self._take(self._probe_loss, n))
                if part is not None:
                    self._write("probe", part)
            for i, r in enumerate(self._rows):
                row = {"step": r["step"], "recorded": True, "skipped": r["skipped"],
                       "clip_factor": self._clip_factor(values[i], has_grad[i], r["step"]) if r["changed"] else math.nan,
                       **{lr_column(g): float(lr) for g, lr in enumerate(r["lrs"])}, **probe_rows.get(r["step"], {})}
                step_rows[r["step"]] = row
        if self._logs:
            tensors = [v for names in self._logs.values() for vs in names.values() for v in vs
                       if isinstance(v, torch.Tensor)]
            host = iter(torch.stack([t.to(torch.float64) for t in tensors]).cpu().tolist()) if tensors else iter(())
            for step, names in self._logs.items():
                row = step_rows.setdefault(step, {"step": step, "recorded": False, "skipped": False,
                                                  "clip_factor": math.nan})
                for name, vs in names.items():
                    row[name] = float(np.mean([next(host) if isinstance(v, torch.Tensor) else v for v in vs]))
        if step_rows:
            self._write("steps", frames.step_frame(list(step_rows.values())))
        self._rows, self._logs, self._n_logs = [], {}, 0

    @staticmethod
    def _take(buffer: torch.Tensor, n: int) -> np.ndarray:
        """The first ``n`` rows on the host (one transfer), and the rows reset to NaN for reuse."""
        values = buffer[:n].to("cpu", torch.float64).numpy()
        buffer[:n].fill_(math.nan)
        return values

    def _write(self, table: str, frame: pd.DataFrame) -> None:
        if not self._layout.writes:  # another process writes the run
            return
        store.write_part(self.run_dir, table, self._next_part[table], frame)
        self._next_part[table] += 1

    def _clip_factor(self, values: np.ndarray, has_grad: np.ndarray, step: int) -> float:
        """The step's clip factor; a change that is not one uniform factor, or looks like a missed
        GradScaler, is noted in the metadata with its step."""
        factor, verdict = frames.clip_factor(values[frames.GRAD_SQ], values[frames.PRE_SQ], has_grad)
        if verdict == "non-uniform":
            self._note("gradient changed non-uniformly between backward and step (e.g. clip_grad_value_): "
                       "lca rescaled per tensor, clip_factor NaN", step)
        elif verdict == "power-of-two" and self._scaler is None:
            self._note("gradients were divided by a power of two between backward and step, as an AMP "
                       "GradScaler does: pass it as attach(scaler=...) or grad_sq is scaled", step)
        return factor


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, views: ViewSpec, *, out: str | Path,
           shared_name: str = SHARED, every: schedules.Every = 1, flush_every: int = 100,
           scaler: Any = None, config: Mapping | None = None, seed: int | None = None,
           condition: str | None = None, resume: bool = False,
           attribute: Mapping[nn.Module | str, Sequence[str] | rows] | None = None,
           probe: probing.ProbeBatch | None = None, probe_every: int = 50) -> Recorder | InactiveRecorder:
    """Record per-tensor training quantities of ``model`` at the optimizer steps chosen by ``every``.

    ``views`` assigns parameters to views (see :func:`dynamics.views.resolve_views`); ``out`` is the run
    directory (never overwritten: pass ``resume=True`` to append); ``scaler`` is the ``torch.amp.GradScaler``
    if one is used, so gradients are recorded unscaled; ``config``, ``seed`` and ``condition`` go into the
    metadata (``load_runs`` turns condition and seed into columns). ``attribute`` splits the gradient of
    modules shared by views (see :mod:`dynamics.attribution`); ``probe`` checks lca on a fixed batch every
    ``probe_every`` steps (see :mod:`dynamics.probe`). Returns a :class:`Recorder`, which is a context
    manager; ``close()`` flushes and removes every hook. Under DistributedDataParallel or ``fully_shard``
    call it on every process: rank 0 writes the run (see :mod:`dynamics.distributed`).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise NotImplementedError("dynamics does not support LBFGS: it evaluates the loss and its gradient "
                                  "inside step(), after the recorder's pre-step hook has run")
    _check_positive_int("flush_every", flush_every)
    if scaler is not None and not hasattr(scaler, "is_enabled"):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    _refuse_unsupported(model)
    schedule = schedules.make_schedule(every)
    if probe is not None:
        if not isinstance(probe, probing.ProbeBatch):
            raise TypeError(f"probe must be a dynamics.ProbeBatch, got {type(probe).__name__}")
        _check_positive_int("probe_every", probe_every)
        recorded = schedule
        schedule = lambda step: recorded(step) or step % probe_every == 0  # noqa: E731 - probe steps are recorded
    attribute, labelled = resolve_attribution(model, views, attribute or {})
    assignment = resolve_views(model, labelled, shared_name=shared_name,
                               extra_views=_attributed_views(attribute))
    groups = {group_label(h) for h in attribute.values()}
    attributed = [p.index for p in assignment.params if p.view in groups]
    owned = {p.view for p in assignment.params} | set(_attributed_views(attribute))
    empty = [v for v in assignment.views if v not in owned]
    if empty:
        raise ValueError(f"view(s) {empty} own no parameter: give them modules or patterns, or attribute= a "
                         f"shared module to them")
    layout = distributed.layout_of(model, [p.name for p in assignment.params], assignment.tensors,
                                   attribution=bool(attribute), probe=probe is not None)
    if not layout.records:
        return InactiveRecorder(assignment)
    if probe is not None:
        probing.check(distributed.unwrapped(model), probe)
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    parameters = [{**info.as_record(), "group": group_of.get(id(t), -1)}
                  for info, t in zip(assignment.params, assignment.tensors)]
    run_dir, meta, next_part, start_step, error = None, {}, {}, 0, None
    if layout.writes:
        try:
            run_dir, meta, next_part, start_step = _open_run(
                out, resume, parameters, model, optimizer, assignment, every=every, flush_every=flush_every,
                scaler=scaler, probe=probe, probe_every=probe_every, config=config, seed=seed, condition=condition)
        except Exception as exc:  # told to the other processes before it is raised, so none waits forever
            error = exc
    # the other processes measure their part at the same steps as rank 0, which writes the run
    start_step = distributed.agree_with_writer(start_step, error, layout)
    return Recorder(model, optimizer, assignment, run_dir, schedule=schedule, flush_every=flush_every,
                    scaler=scaler, meta=meta, next_part=next_part, start_step=start_step,
                    attribute=attribute, attributed=attributed, probe=probe, probe_every=probe_every,
                    layout=layout)


def _open_run(out: str | Path, resume: bool, parameters: list[dict], model: nn.Module,
              optimizer: torch.optim.Optimizer, assignment: ViewAssignment, **described: Any
              ) -> tuple[Path, dict, dict[str, int], int]:
    """Create (or reopen, to resume) the run directory and write its metadata; returns the first step."""
    run_dir, old_meta, next_part = store.prepare_run_dir(out, resume=resume)
    if old_meta is not None and [p["name"] for p in old_meta["parameters"]] != [p["name"] for p in parameters]:
        raise store.RunStoreError(f"{run_dir}: cannot resume: the model's recorded parameters differ from the run's")
    meta = description.describe_run(model, optimizer, assignment, parameters, **described,
                                created=(old_meta or {}).get("created"))
    start_step = 0
    if old_meta is not None:
        start_step = int(old_meta.get("next_step") or _next_step_on_disk(run_dir))
        meta["resumed_at"] = [*old_meta.get("resumed_at", []), start_step]
    store.write_meta(run_dir, meta)
    return run_dir, meta, next_part, start_step


def _next_step_on_disk(run_dir: Path) -> int:
    """After a crash meta.json has no next_step: continue after the last step on disk."""
    last = store.last_step(run_dir)
    return 0 if last is None else last + 1
