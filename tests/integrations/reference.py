"""The brute-force reference for the trainer tests: the harness's plain loop on an identical copy of the model,
with the per-step training loss taken from that loop's own forward passes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from tests.harness import Setup, clone, state, train


def plain_loop(model: nn.Module, setup: Setup, batches, loss_rows: slice = slice(None)
               ) -> tuple[pd.DataFrame, pd.Series, dict]:
    """(reference rows per step and tensor, the mean training loss of each step's micro-batches, the trained
    copy's parameters and buffers). ``model`` itself is not changed. ``loss_rows``: the rows of each batch the
    loss is taken over (a DDP process's part)."""
    copy = clone(model)
    outputs: list[torch.Tensor] = []
    handle = copy.register_forward_hook(lambda m, args, out: outputs.append(out.detach().float().clone()))
    try:
        rows = train(copy, setup, batches)
    finally:
        handle.remove()
    targets = [y for micro in batches for (_, _, y) in micro]
    losses = [float(((out[loss_rows] - y[loss_rows]) ** 2).mean()) for out, y in zip(outputs, targets, strict=True)]
    per_step = np.asarray(losses).reshape(len(batches), -1).mean(axis=1)
    return rows, pd.Series(per_step, index=pd.RangeIndex(len(batches), name="step")), state(copy)


def expected_clip_factor(rows: pd.DataFrame, clip: float) -> pd.Series:
    """clip_grad_norm_'s factor per step from the reference gradients: max_norm / (‖g‖ + 1e-6), at most 1."""
    total = np.sqrt(rows.groupby("step")["grad_sq"].sum())
    return np.minimum(1.0, clip / (total + 1e-6))


def without_prefix(per_param: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The recorded table with parameter names as the bare model names them."""
    return per_param.astype({"param": str}).assign(param=lambda d: d["param"].str.removeprefix(prefix))


def brute_force_rows(step: int, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     after: dict[str, torch.Tensor]) -> list[dict]:
    """The harness's rows for one step of another loop: ``before`` maps a parameter name to (its gradient after
    the last backward, θ_t), both cloned in float64; ``after`` to the parameter after the step."""
    rows = []
    for name, (g, theta) in before.items():
        delta = after[name].detach().double() - theta
        rows.append({"step": step, "param": name, "grad_sq": float((g ** 2).sum()),
                     "param_sq": float((theta ** 2).sum()), "update_sq": float((delta ** 2).sum()),
                     "lca": float((g * delta).sum()), "skipped": False})
    return rows
