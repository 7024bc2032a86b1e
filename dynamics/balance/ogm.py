"""On-the-fly gradient modulation with generalisation enhancement (OGM-GE; Peng et al., CVPR 2022).

Per training pass, each view v gets a unimodal output u_v from the fusion module's input: for an ``nn.Linear``
on the concatenation, u_v = h_v W_vᵀ + b / n (W_v: the columns of W that view v's slice meets; the authors'
split of the bias); for any other fusion module, u_v = f(h with every other view zeroed) − (1 − 1/n)·f(0),
which is the same thing when f is affine (f evaluated in eval mode and without its own hooks, so that the
extra evaluations change no buffer and draw no random number); or ``unimodal(module, parts)`` given by the user. Its score s_v is
the mean probability of the target (softmax for C ≥ 2 classes, sigmoid for one logit). The discrepancy ratio
is ρ_v = s_v / mean_{u≠v} s_u and the coefficient

    k_v = 1 − tanh(α · relu(ρ_v − 1))                        (rule="shifted", default)
    k_v = 1 − tanh(α · ρ_v) if ρ_v > 1 else 1                (rule="authors", as in the authors' code)

multiplies the gradient of every (selected) parameter of view v's branch; with ``noise=True`` (GE) Gaussian
noise N(0, (std g + 1e-8)²) is added to it, std taken over the tensor's unmodulated gradient, as published.
The scores need the targets: from a forward pre-hook on ``loss`` (an ``nn.Module`` called as
``loss(prediction, target)``), or given with ``handle.targets(y)`` before the backward pass.

Applied by tensor hooks on the branch parameters, so each backward pass (each micro-batch) is modulated with
its own coefficients before accumulation; the recorder measures the modulated gradient, the one the optimizer
uses. Logged per step: ``ogm_coef_<view>`` and ``ogm_score_<view>`` (means over the step's passes; device
tensors, no host read).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import OGM_COEF_PREFIX, OGM_KIND, OGM_SCORE_PREFIX, balance_column
from .fusion import Branch, FusionInput
from .handle import BranchIntervention, eager

RULES = ("shifted", "authors")
Unimodal = Callable[[nn.Module, list[torch.Tensor]], Sequence[torch.Tensor]]


def unimodal_outputs(module: nn.Module, fusion_input: FusionInput, args: tuple) -> list[torch.Tensor]:
    """Each view's share of the fusion module's output (see the module docstring), without gradients."""
    parts = [p.detach() for p in fusion_input.split(args)]
    n = len(parts)
    with torch.no_grad():
        if isinstance(module, nn.Linear) and fusion_input.concatenated(args):
            columns = torch.split(module.weight, [p.shape[1] for p in parts], dim=1)
            bias = None if module.bias is None else module.bias / n
            return [F.linear(h, w, bias) for h, w in zip(parts, columns)]
        zeros = [torch.zeros_like(p) for p in parts]
        modes = [m.training for m in module.modules()]
        module.eval()  # no buffer updates, no dropout draws: the extra evaluations leave no trace
        try:
            base = module.forward(*fusion_input.join(args, zeros))
            return [module.forward(*fusion_input.join(args, [p if i == v else z for i, (p, z) in
                                                              enumerate(zip(parts, zeros))])) - (1 - 1 / n) * base
                    for v in range(n)]
        finally:
            for m, mode in zip(module.modules(), modes):
                m.training = mode


def scores(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Per view, the mean probability its unimodal output gives the target: softmax over C ≥ 2 classes with
    class-index targets, sigmoid of a single logit with 0/1 targets."""
    out = []
    for u in outputs:
        u = u.float()
        if u.dim() == 2 and u.shape[1] >= 2 and not target.is_floating_point():
            p = torch.softmax(u, dim=1).gather(1, target.reshape(-1, 1).long()).squeeze(1)
        elif u.dim() == 1 or (u.dim() == 2 and u.shape[1] == 1):
            y = target.reshape(-1).to(u.dtype)
            s = torch.sigmoid(u.reshape(-1))
            p = y * s + (1 - y) * (1 - s)
        else:
            raise ValueError(f"OGM-GE: cannot score a unimodal output of shape {tuple(u.shape)} against targets of "
                             f"shape {tuple(target.shape)} and dtype {target.dtype}: give unimodal= that returns "
                             f"(N, C) logits for class-index targets or (N,) logits for 0/1 targets")
        out.append(p.mean())
    return torch.stack(out)


def coefficients(s: torch.Tensor, alpha: float, rule: str = "shifted") -> tuple[torch.Tensor, torch.Tensor]:
    """(k, ρ) per view from the scores s: ρ_v = s_v / mean of the other views' scores."""
    n = s.shape[0]
    others = ((s.sum() - s) / (n - 1)).clamp_min(torch.finfo(s.dtype).tiny)
    rho = s / others
    if rule == "shifted":
        k = 1 - torch.tanh(alpha * torch.relu(rho - 1))
    elif rule == "authors":
        k = torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
    else:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return k, rho


class OGMGE(BranchIntervention):
    """:func:`ogm_ge`'s handle. ``targets(y)`` gives the targets of the current pass when no ``loss`` module is
    hooked."""

    kind = OGM_KIND

    def __init__(self, fusion: nn.Module, optimizer: torch.optim.Optimizer, branches: Mapping[str, Branch], *,
                 loss: nn.Module | None, widths, alpha: float, noise: bool, start: int, stop: int | None,
                 rule: str, select: Callable[[str, nn.Parameter], bool] | None, seed: int,
                 unimodal: Unimodal | None) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if loss is not None and not isinstance(loss, nn.Module):
            raise TypeError(f"loss must be an nn.Module called as loss(prediction, target) (or None: call "
                            f"handle.targets(y)), got {type(loss).__name__}")
        super().__init__(fusion, optimizer, branches, widths)
        chosen = {v: [(n, p) for n, p in ps if select is None or select(n, p)] for v, ps in self.named.items()}
        empty = [v for v, ps in chosen.items() if not ps]
        if empty:
            self.remove()
            raise ValueError(f"select= keeps no parameter of the branch(es) {empty}")
        self.alpha, self.noise, self.start, self.stop, self.rule = float(alpha), bool(noise), start, stop, rule
        self._unimodal, self._seed = unimodal, seed
        self._outputs: list[torch.Tensor] | None = None   # this pass's unimodal outputs, awaiting targets
        self.coef: torch.Tensor | None = None            # this pass's k (device), applied in its backward
        self._sums: torch.Tensor | None = None           # Σ over the step's passes of [k; s]
        self._passes = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self._keep(fusion.register_forward_hook(eager(self._after_fusion)))
        if loss is not None:
            self._keep(loss.register_forward_pre_hook(eager(self._before_loss)))
        for i, v in enumerate(self.views):
            for _, p in chosen[v]:
                self._keep(p.register_hook(eager(self._grad_hook(i))))

    def _on(self) -> bool:
        return self._active() and self.step >= self.start and (self.stop is None or self.step < self.stop)

    # ------------------------------------------------------------------------------------------ forward
    def _after_fusion(self, module: nn.Module, args: tuple, output) -> None:
        if not module.training or not torch.is_grad_enabled() or not self._on():
            return
        self.coef = None
        if self._unimodal is not None:
            with torch.no_grad():
                self._outputs = [u.detach() for u in self._unimodal(module, [p.detach() for p in self._input.split(args)])]
        else:
            self._outputs = unimodal_outputs(module, self._input, args)

    def _before_loss(self, module: nn.Module, args: tuple) -> None:
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            self.targets(args[1])

    def targets(self, target: torch.Tensor) -> None:
        """The targets of the pass just run forward: its coefficients are computed now (on the device)."""
        if self._outputs is None or not self._on():
            return
        with torch.no_grad():
            s = scores(self._outputs, target.detach())
            self.coef, _ = coefficients(s, self.alpha, self.rule)
            both = torch.cat([self.coef, s])
            self._sums = both if self._sums is None else self._sums + both
        self._passes += 1
        self._outputs = None

    # ----------------------------------------------------------------------------------------- backward
    def _grad_hook(self, view: int) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            if self.coef is None or not self._on():
                if self._outputs is not None and self._on():
                    raise RuntimeError("dynamics.balance OGM-GE: a backward pass ran after a training forward "
                                       "pass whose targets it never saw: pass loss= the criterion module, or call "
                                       "handle.targets(y) before backward()")
                return None
            out = grad * self.coef[view].to(grad.dtype)
            if self.noise:  # + N(0, 1) · (std g + 1e-8), in place on the new tensor
                spread = grad.std() if grad.numel() > 1 else torch.zeros((), device=grad.device, dtype=grad.dtype)
                noise = torch.randn(grad.shape, generator=self._generator(grad.device), device=grad.device,
                                    dtype=grad.dtype)
                out.addcmul_(noise, spread + 1e-8)
            return out
        return hook

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    # --------------------------------------------------------------------------------- optimizer steps
    def _pre_step(self) -> None:
        if self._sums is None:
            return
        n = len(self.views)
        mean = self._sums / self._passes
        self._log(**{balance_column(OGM_COEF_PREFIX, v): mean[i] for i, v in enumerate(self.views)},
                  **{balance_column(OGM_SCORE_PREFIX, v): mean[n + i] for i, v in enumerate(self.views)})

    def _post_step(self) -> None:
        self._sums, self._passes = None, 0


def ogm_ge(fusion: nn.Module, optimizer: torch.optim.Optimizer, branches: Mapping[str, Branch], *,
           loss: nn.Module | None = None, widths: Mapping[str, int] | Sequence[int] | None = None,
           alpha: float = 0.1, noise: bool = True, start: int = 0, stop: int | None = None, rule: str = "shifted",
           select: Callable[[str, nn.Parameter], bool] | None = None, seed: int = 0,
           unimodal: Unimodal | None = None) -> OGMGE:
    """Modulate each view's branch gradients by OGM-GE (see the module docstring); returns the handle.

    ``fusion``: the module whose input holds the views' representations and whose output is the logits;
    ``branches``: view → module (or parameters), in the order the fusion module receives the views;
    ``start``/``stop``: the optimizer steps (counted from attaching) in which it acts; ``select(name, p)``
    chooses which branch parameters are modulated (the authors': ``lambda n, p: p.dim() == 4``, conv weights);
    ``seed``: the noise's own generator (the global random stream is not used).
    """
    return OGMGE(fusion, optimizer, branches, loss=loss, widths=widths, alpha=alpha, noise=noise, start=start,
                 stop=stop, rule=rule, select=select, seed=seed, unimodal=unimodal)
