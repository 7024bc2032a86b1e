"""A linear probe of each trained column: how much a view's representation knows about the label on its own.

The column is frozen (the best-validation model, evaluation mode); its features on the training split are
standardised with the training mean and spread, an L2-penalised logistic regression is fitted to them, and
its ROC AUC on the test split is the probe's score. A column that learned its view well scores near a
single-view model even when the joint model's head ignores it (greedy learning shows as a high probe AUC
with a low conditional utilization); a column that fitted the training labels without learning the view
scores near 0.5.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dynamics.analysis.metrics import roc_auc

from analyses.datasets.common import TwoViewData, TwoViewSplits


def column_features(model: torch.nn.Module, view: str, data: TwoViewData, device: str,
                    batch_size: int = 512) -> torch.Tensor:
    """The column's representation of ``view`` for every sample of ``data`` (float64, on the host)."""
    model.eval()
    out = []
    with torch.no_grad():
        for inputs, _ in data.batches(batch_size, device=device):
            out.append(model.represent(view, inputs[view]).double().cpu())
    return torch.cat(out)


def logistic_objective(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean binary cross-entropy of ``x @ w[:-1] + w[-1]`` plus ``l2/2 · ‖w[:-1]‖²`` (the bias is not penalised)."""
    logits = x @ w[:-1] + w[-1]
    return F.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * (w[:-1] ** 2).sum()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, max_iter: int = 200) -> torch.Tensor:
    """Weights and bias (last entry) minimising :func:`logistic_objective`, by L-BFGS in float64.

    The objective is strictly convex for ``l2 > 0``, so the minimiser is unique and any converged solver
    reaches it (the tests check against scipy's)."""
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it makes the minimiser unique), got {l2}")
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = logistic_objective(w, x, y, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every set by the training set's mean and spread (constant features stay 0)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(t - mean) / std for t in (train, *others)]


def probe_columns(model: torch.nn.Module, splits: TwoViewSplits, device: str, l2: float = 1e-2) -> dict[str, float]:
    """Test ROC AUC of a logistic probe on each of the model's columns (see the module docstring)."""
    out = {}
    y_train = splits.train.y.double()
    for view in model.views:
        train, test = standardise(column_features(model, view, splits.train, device),
                                  column_features(model, view, splits.test, device))
        w = fit_logistic(train, y_train, l2)
        scores = (test @ w[:-1] + w[-1]).numpy()
        out[view] = float(roc_auc(splits.test.y.numpy(), scores)) if np.isfinite(scores).all() else float("nan")
    return out
