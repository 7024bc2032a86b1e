"""Modality dropout: per sample, drop one view's representation with probability p, never all of them.

For views v with weights w_v (Σ w = 1; equal by default), each sample independently loses one view with
probability p, view v with probability p·w_v. A kept representation is multiplied by 1 / (1 − p·w_v), so its
expectation equals the representation itself and evaluation needs no change: in eval mode the module is the
identity. The random numbers come from ``generator`` (the global stream if None), two uniform draws per
sample: u₁ < p decides whether the sample loses a view, u₂ against the cumulative weights decides which.

:class:`ModalityDropout` is a module for the user's own forward; :func:`modality_dropout` applies one to the
input of an existing fusion module by a hook. With a recorder attached to the model, each training step's
count of samples in which each view was present is logged as ``present_<view>`` (device tensors, no host read).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Mapping, Sequence

import torch
from torch import nn

from ..record import registry
from ..schema import DROPOUT_KIND, PRESENT_PREFIX, balance_column
from . import phase
from .fusion import FusionInput
from .handle import Intervention, eager, log_at_backward_end


def dropout_masks(n: int, p: float, boundaries: torch.Tensor, n_views: int, *,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """0/1 keep-masks of length ``n``, one per view: with probability ``p`` a sample loses exactly one view,
    view v when the second uniform draw falls in [c_{v−1}, c_v) of the cumulative weights c
    (``boundaries`` = c without its last element)."""
    device = boundaries.device
    drop = torch.rand(n, device=device, generator=generator) < p
    which = torch.bucketize(torch.rand(n, device=device, generator=generator), boundaries, right=True)
    return [(~(drop & (which == v))).float() for v in range(n_views)]


def _normalised(views: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / len(views)] * len(views)
    if isinstance(weights, Mapping):
        if set(weights) != set(views):
            raise ValueError(f"weights name {sorted(weights)}; expected exactly the views {list(views)}")
        weights = [weights[v] for v in views]
    weights = [float(w) for w in weights]
    if len(weights) != len(views) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be one non-negative number per view {list(views)}, not all zero; "
                         f"got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


class ModalityDropout(nn.Module):
    """Modality dropout on a list (or dict) of per-view representations; see the module docstring."""

    def __init__(self, views: Sequence[str], p: float = 0.25, *,
                 weights: Mapping[str, float] | Sequence[float] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.views = [str(v) for v in views]
        if len(self.views) < 2 or len(set(self.views)) != len(self.views):
            raise ValueError(f"modality dropout needs at least two distinct views, got {list(views)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.weights = _normalised(self.views, weights)
        always = [v for v, w in zip(self.views, self.weights) if self.p * w >= 1.0]
        if always:
            raise ValueError(f"with p={p} and weights {self.weights}, view(s) {always} would be dropped from every "
                             f"sample: lower p or their weight")
        self.scales = [1.0 / (1.0 - self.p * w) for w in self.weights]
        self.generator = generator
        self.last_present: dict[str, torch.Tensor] = {}
        self._boundaries: dict[torch.device, torch.Tensor] = {}
        self._tracking: weakref.finalize | None = None  # holds the step tracker (phase) once logging began
        self._anchor: weakref.ref | None = None  # the model module the recorder is found from (hook mode)

    def __getstate__(self) -> dict:
        """Copies and pickles start afresh: no step tracker held, no fusion module they were hooked to."""
        state = self.__dict__.copy()
        state.update(_tracking=None, _anchor=None, _boundaries={})
        return state

    def extra_repr(self) -> str:
        return f"views={self.views}, p={self.p}, weights={[round(w, 4) for w in self.weights]}"

    def _cuts(self, device: torch.device) -> torch.Tensor:
        if device not in self._boundaries:
            cumulative, total = [], 0.0
            for w in self.weights[:-1]:
                total += w
                cumulative.append(total)
            self._boundaries[device] = torch.tensor(cumulative, device=device)
        return self._boundaries[device]

    def forward(self, reps: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]):
        """The representations with the dropped ones zeroed and the kept ones rescaled (training only)."""
        as_dict = isinstance(reps, Mapping)
        tensors = [reps[v] for v in self.views] if as_dict else list(reps)
        if as_dict and set(reps) != set(self.views):
            raise KeyError(f"modality dropout: got views {sorted(reps)}, expected {self.views}")
        if len(tensors) != len(self.views):
            raise ValueError(f"modality dropout: got {len(tensors)} representations for views {self.views}")
        if not self.training or self.p == 0.0:
            n = tensors[0].shape[0]
            self.last_present = {v: torch.tensor(float(n), device=tensors[0].device) for v in self.views}
            return reps
        keep = dropout_masks(tensors[0].shape[0], self.p, self._cuts(tensors[0].device), len(self.views),
                             generator=self.generator)
        out = [r * (k * s).view(-1, *([1] * (r.dim() - 1))).to(r.dtype) for r, k, s in zip(tensors, keep, self.scales)]
        self.last_present = {v: k.sum().detach() for v, k in zip(self.views, keep)}
        self._log_counts(out)
        return dict(zip(self.views, out)) if as_dict else (type(reps)(out) if isinstance(reps, tuple) else out)

    @torch.compiler.disable
    def _log_counts(self, outputs: list[torch.Tensor]) -> None:
        """The step's present counts into the attached recorder (not for passes inside an optimizer step);
        always eager, so that a compiled model's graph does not trace the bookkeeping."""
        if not torch.is_grad_enabled():
            return
        if self._tracking is None:  # know from now on whether a pass runs inside optimizer.step() (the probe's)
            phase.acquire()
            self._tracking = weakref.finalize(self, phase.release)
        if phase.inside_step() or registry.in_own_pass():
            return
        anchor = self if self._anchor is None else self._anchor()
        rec = None if anchor is None else registry.active_for(anchor)
        if rec is not None:
            scalars = {balance_column(PRESENT_PREFIX, v): c for v, c in self.last_present.items()}
            log_at_backward_end(outputs, rec, scalars, self._warn_once)

    def _warn_once(self, text: str) -> None:
        if not getattr(self, "_warned", False):
            self._warned = True
            warnings.warn(f"dynamics.balance (modality dropout): {text}", RuntimeWarning, stacklevel=2)

    def release_tracker(self) -> None:
        """Give the step tracker back now rather than when this module is collected."""
        if self._tracking is not None:
            self._tracking()  # a finalizer runs once: release() is called exactly once
            self._tracking = None


class DropoutHandle(Intervention):
    """:func:`modality_dropout`'s handle: the module it applies is ``.dropout``."""

    kind = DROPOUT_KIND

    def __init__(self, fusion: nn.Module, dropout: ModalityDropout, fusion_input: FusionInput) -> None:
        super().__init__(fusion)
        self.dropout, self._input = dropout, fusion_input
        dropout._anchor = weakref.ref(fusion)
        self._keep(fusion.register_forward_pre_hook(eager(self._pre_forward)))

    def remove(self) -> None:
        self.dropout.release_tracker()
        super().remove()

    def _pre_forward(self, module: nn.Module, args: tuple):
        if not self._active() or not module.training:  # a pass inside optimizer.step() (the probe's) is left
            return None                                  # alone: no mask drawn, from any generator
        self.dropout.training = True
        return self._input.join(args, self.dropout(self._input.split(args)))


def modality_dropout(fusion: nn.Module, views: Sequence[str] | Mapping[str, int], *, p: float = 0.25,
                     weights: Mapping[str, float] | Sequence[float] | None = None,
                     generator: torch.Generator | None = None) -> DropoutHandle:
    """Apply modality dropout to the input of ``fusion`` by a forward pre-hook; returns the removable handle.

    ``views``: the view names in the order the fusion module receives them (one argument per view, or one
    tensor concatenating them along dimension 1 in equal widths), or a dict view → width for a concatenation
    of unequal widths.
    """
    widths = dict(views) if isinstance(views, Mapping) else None
    names = list(views)
    return DropoutHandle(fusion, ModalityDropout(names, p, weights=weights, generator=generator),
                         FusionInput(fusion, names, widths))
