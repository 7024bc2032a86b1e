"""Conditional-learning-speed re-balancing (Wu et al., ICML 2022), adapted to late fusion.

Each view's branch has a learning speed μ_v = Σ‖g‖² / Σ‖θ‖² per optimizer step (sums over the branch's tensors
that have a gradient; g is the gradient the optimizer uses). Over the regular steps it accumulates to
S_v = Σ_t μ_v(t). Every ``every`` steps from ``warmup`` on, outside a re-balancing window, S is read (one host
transfer) and d = log10(max S / min S); when d > ``threshold`` the next ``steps`` optimizer steps re-balance
the slowest view s: at the fusion input every other view's representation is replaced by its running mean
(detached), so the prediction varies with view s alone and its branch must carry it. Re-balancing steps add
nothing to S. ``mode="random"`` is the control: at every decision point one of {no re-balancing, each view}
is drawn uniformly (no speeds are read); a drawn view is re-balanced for the next ``steps`` steps. With
``windows=k`` and ``horizon=T`` the random control is dose-matched instead: exactly k windows (a guided run's
count) at decision steps drawn uniformly among the non-overlapping placements in [``warmup``, T), each for a
view drawn uniformly.

Logged per step into an attached recorder: ``rebalanced_<view>`` (1 on the steps re-balanced for the view,
else 0) and, at the steps where S is read, ``rebalance_speed_<view>`` = S_v.
"""
from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import torch
from torch import nn

from ..schema import REBALANCE_KIND, REBALANCE_SPEED_PREFIX, REBALANCED_PREFIX, balance_column
from .fusion import Branch
from .handle import BranchIntervention, eager

MODES = ("guided", "random")


def decide(speeds: Sequence[float], threshold: float) -> tuple[int | None, float]:
    """The view to re-balance (index of the slowest) when log10(max S / min S) exceeds ``threshold``, and d."""
    if any(not (s > 0) or math.isinf(s) for s in speeds):
        return None, math.nan  # no gradient yet, or non-finite: no decision
    d = math.log10(max(speeds) / min(speeds))
    return (min(range(len(speeds)), key=lambda i: speeds[i]) if d > threshold else None), d


class Rebalance(BranchIntervention):
    """:func:`rebalance`'s handle; ``schedule`` lists (step, view) for every re-balancing step so far."""

    kind = REBALANCE_KIND

    def __init__(self, fusion: nn.Module, optimizer: torch.optim.Optimizer, branches: Mapping[str, Branch], *,
                 widths: Mapping[str, int] | Sequence[int] | None, threshold: float, every: int, steps: int,
                 warmup: int, mode: str, seed: int, windows: int | None = None,
                 horizon: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value, low in (("every", every, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0 (a log10 ratio), got {threshold!r}")
        if (windows is None) != (horizon is None) or (windows is not None and mode != "random"):
            raise ValueError(f"windows and horizon go together, with mode='random' (got windows={windows!r}, "
                             f"horizon={horizon!r}, mode={mode!r})")
        super().__init__(fusion, optimizer, branches, widths)
        self._params = [[p for _, p in self.named[v]] for v in self.views]
        self.threshold, self.every, self.steps, self.warmup, self.mode = threshold, every, steps, warmup, mode
        self._rng = random.Random(seed)
        self._starts = None if windows is None else matched_starts(windows, warmup, horizon, steps, self._rng)
        self.windows = 0                       # windows opened so far (a guided run's dose)
        self.current: int | None = None       # the view re-balanced at this step (index), None: a regular step
        self._left = 0
        self._decision: tuple[int | None] | None = None  # taken at a pre-step hook, applied at the post-step
        self._means: list[torch.Tensor] | None = None
        self._n_means = 0
        self._speeds: torch.Tensor | None = None
        self.schedule: list[tuple[int, str]] = []
        self.reads = 0                         # host reads of the accumulated speeds so far
        self._keep(fusion.register_forward_pre_hook(eager(self._pre_forward)))

    # ------------------------------------------------------------------------------------------ forward
    def _pre_forward(self, module: nn.Module, args: tuple):
        if not module.training or not self._active():
            return None
        parts = self._input.split(args)
        with torch.no_grad():
            batch_means = [p.detach().float().mean(0) for p in parts]
            if self._means is None:
                self._means = [m.clone() for m in batch_means]
            else:  # the running mean over all training passes so far (the current one included)
                n = self._n_means
                for mean, new in zip(self._means, batch_means):
                    mean.mul_(n).add_(new).div_(n + 1)
            self._n_means += 1
        if self.current is None:
            return None
        swapped = [p if i == self.current else
                   self._means[i].to(p.dtype).expand(p.shape).contiguous() for i, p in enumerate(parts)]
        return self._input.join(args, swapped)

    # --------------------------------------------------------------------------------- optimizer steps
    def _pre_step(self) -> None:
        if self.current is None:
            self._accumulate()
        scalars = {balance_column(REBALANCED_PREFIX, v): float(i == self.current) for i, v in enumerate(self.views)}
        if self.current is not None:
            self.schedule.append((self.step, self.views[self.current]))
        due = self.step >= self.warmup and (self.step - self.warmup) % self.every == 0
        if self._starts is not None:  # dose-matched control: a window at each drawn start
            if self.step in self._starts:
                self._decision = (self._rng.randrange(len(self.views)),)
        elif due and self.mode == "random":  # a new draw replaces an open window
            choice = self._rng.randrange(len(self.views) + 1)
            self._decision = (None if choice == len(self.views) else choice,)
        elif due and self.current is None:
            speeds = self._speeds.tolist() if self._speeds is not None else [0.0] * len(self.views)
            self.reads += 1
            view, _ = decide(speeds, self.threshold)
            self._decision = (view,) if view is not None else None
            scalars.update({balance_column(REBALANCE_SPEED_PREFIX, v): s for v, s in zip(self.views, speeds)})
        self._log(**scalars)

    def _post_step(self) -> None:
        if self.current is not None:
            self._left -= 1
            if self._left <= 0:
                self.current = None
        if self._decision is not None:  # the decision taken at this step's pre-hook holds from the next step
            (self.current,) = self._decision
            self._left = self.steps if self.current is not None else 0
            self.windows += self.current is not None
            self._decision = None

    def _accumulate(self) -> None:
        """S_v += Σ‖g‖² / Σ‖θ‖² over each branch's tensors that have a gradient: one device accumulation."""
        with torch.no_grad():
            rates = []
            for params in self._params:
                with_grad = [p for p in params if p.grad is not None]
                if not with_grad:
                    rates.append(None)
                    continue
                g = torch.stack(torch._foreach_norm([p.grad for p in with_grad])).double().square().sum()
                w = torch.stack(torch._foreach_norm(with_grad)).double().square().sum()
                rates.append(g / w)
            if all(r is None for r in rates):
                return
            device = next(r.device for r in rates if r is not None)
            rate = torch.stack([torch.zeros((), dtype=torch.float64, device=device) if r is None else r
                                for r in rates])
            if self._speeds is None:
                self._speeds = rate
            else:
                self._speeds.add_(rate)


def matched_starts(windows: int, warmup: int, horizon: int, steps: int, rng: random.Random) -> frozenset[int]:
    """``windows`` decision steps in [``warmup``, ``horizon``), drawn uniformly among the placements whose
    windows (the ``steps`` steps after each decision) neither overlap nor touch: gaps of at least ``steps`` + 1,
    as the guided mode's decisions have. The last window may be cut at the horizon, as a guided run's is.
    Raises ValueError when they do not fit."""
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise ValueError(f"windows must be an int >= 0, got {windows!r}")
    free = (horizon - warmup) - max(windows - 1, 0) * steps
    if windows and free < windows:
        raise ValueError(f"{windows} windows of {steps} steps do not fit between warmup {warmup} and "
                         f"horizon {horizon}")
    picks = sorted(rng.sample(range(free), windows)) if windows else []
    return frozenset(warmup + c + i * steps for i, c in enumerate(picks))


def rebalance(fusion: nn.Module, optimizer: torch.optim.Optimizer, branches: Mapping[str, Branch], *,
              widths: Mapping[str, int] | Sequence[int] | None = None, threshold: float = 0.01, every: int = 1,
              steps: int = 5, warmup: int = 0, mode: str = "guided", seed: int = 0,
              windows: int | None = None, horizon: int | None = None) -> Rebalance:
    """Re-balance training toward the view whose branch learns slowest (see the module docstring).

    ``fusion``: the module whose input holds the views' representations (one argument per view, or one
    concatenated tensor; ``widths`` for unequal widths); ``branches``: view → module (or parameters) of
    that view's branch, in the order the fusion module receives the views. ``every``: steps between reads of
    the speeds (the authors check at every regular step: 1); ``steps``: length of a re-balancing window
    (authors: 5); ``threshold``: on log10(max S / min S) (authors: 0.01); ``warmup``: steps before the first
    decision (the authors start at epoch 2); ``windows`` and ``horizon`` (random mode only): the dose-matched
    control, exactly ``windows`` windows before step ``horizon`` (a guided run's ``windows`` count). Returns
    the removable handle.
    """
    return Rebalance(fusion, optimizer, branches, widths=widths, threshold=threshold, every=every, steps=steps,
                     warmup=warmup, mode=mode, seed=seed, windows=windows, horizon=horizon)
