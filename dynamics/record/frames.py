"""Host-side arrays of one flush → the tidy frames written as Parquet parts. Pure functions, no torch.

Record's own: the gradient verdicts (clip factor, unattributed rows) go back into the run's notes. Layouts (``n``
buffered rows, ``k`` recorded tensors): quantities ``[n, 5, k]`` in the order of
:data:`dynamics.schema.BUFFER_ROWS`; attribution ``[n, views, 3, shared]`` (grad_sq, lca, cross); probe lca ``[n, 3, k]``
(first, trapezoid, Simpson) and probe losses ``[n, 2]`` (before, after).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..schema import GRAD_SQ, LCA, PARAM_SQ, PRE_SQ, PROBE_CHANGE, PROBE_LOSSES, RULES, UPDATE_SQ, probe_lca, probe_residual

CLIP_TOLERANCE = 1e-3  # relative spread of per-tensor ratios still called "one uniform factor"


def param_frame(steps: np.ndarray, values: np.ndarray, has_grad: np.ndarray, skipped: np.ndarray,
                measured: np.ndarray) -> pd.DataFrame:
    """One row per step × tensor. ``finite``: the backward's gradient and, on taken steps, the optimizer's.
    A skipped step whose gradient was not measured (``measured`` False: grad_sq NaN) is not called
    non-finite: its gradient is unknown, not NaN."""
    n, _, k = values.shape
    grad_sq = values[:, GRAD_SQ]
    finite = (np.isfinite(grad_sq) | ~measured[:, None]) & (skipped[:, None] | np.isfinite(values[:, PRE_SQ]))
    return pd.DataFrame({
        "step": np.repeat(steps, k), "param_id": np.tile(np.arange(k, dtype=np.int32), n),
        "grad_sq": grad_sq.ravel(), "param_sq": values[:, PARAM_SQ].ravel(),
        "update_sq": values[:, UPDATE_SQ].ravel(), "lca": values[:, LCA].ravel(),
        "finite": finite.ravel(), "has_grad": has_grad.ravel(),
    })


def attribution_frame(steps: np.ndarray, values: np.ndarray, views: Sequence[str], ids: Sequence[int]) -> pd.DataFrame:
    """One row per step × view × shared tensor: the view's grad_sq, lca and cross term."""
    n, n_views, _, n_shared = values.shape
    return pd.DataFrame({
        "step": np.repeat(steps, n_views * n_shared),
        "param_id": np.tile(np.asarray(ids, dtype=np.int32), n * n_views),
        "view": np.tile(np.repeat(np.asarray(views, dtype=object), n_shared), n),
        "grad_sq": values[:, :, 0].ravel(), "lca": values[:, :, 1].ravel(), "cross": values[:, :, 2].ravel(),
    })


def unattributed_rows(values: np.ndarray, parts: np.ndarray, ids: Sequence[int],
                      tolerance: float = 1e-3) -> np.ndarray:
    """Rows where Σ_v (‖g_v‖² + g_v·(g − g_v)) = ‖Σ_v g_v‖² misses the tensor's ‖g‖²: some of the gradient
    did not pass through an attributed call. Rows without finite numbers are not judged."""
    whole = values[:, GRAD_SQ][:, np.asarray(ids, dtype=int)]            # [n, shared]
    attributed = (parts[:, :, 0] + parts[:, :, 2]).sum(axis=1)           # [n, shared]
    judged = np.isfinite(whole) & np.isfinite(attributed)
    # relative to the tensor, but not below a millionth of the row's largest (rounding noise near zero)
    scale = np.maximum(np.abs(whole), 1e-6 * np.nanmax(np.where(judged, np.abs(whole), 0.0), axis=1, keepdims=True))
    off = np.abs(attributed - whole) > tolerance * np.maximum(scale, 1e-30)
    return np.flatnonzero((judged & off).any(axis=1))


def tensor_frame(steps: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """A per-tensor table's part: one row per step × tensor, each column from its ``[n, tensors]`` array."""
    n, k = next(iter(values.values())).shape
    return pd.DataFrame({"step": np.repeat(steps, k), "param_id": np.tile(np.arange(k, dtype=np.int32), n),
                         **{column: array.ravel() for column, array in values.items()}})


def probe_frame(steps: np.ndarray, lca: np.ndarray, losses: np.ndarray) -> tuple[pd.DataFrame | None, dict[int, dict]]:
    """Per-tensor probe lca of the probed rows, and per step the losses, their change and each rule's residual
    (change − Σ over tensors of that rule's lca)."""
    probed = np.flatnonzero(~np.isnan(losses[:, 1]))
    if not len(probed):
        return None, {}
    frame = tensor_frame(steps[probed], {probe_lca(rule): lca[probed, r] for r, rule in enumerate(RULES)})
    rows = {}
    for i in probed:
        change = losses[i, 1] - losses[i, 0]
        row = {PROBE_LOSSES[0]: losses[i, 0], PROBE_LOSSES[1]: losses[i, 1], PROBE_CHANGE: change}
        row.update({probe_residual(rule): change - lca[i, r].sum() for r, rule in enumerate(RULES)})
        rows[int(steps[i])] = row
    return frame, rows


def clip_factor(true_sq: np.ndarray, pre_sq: np.ndarray, usable: np.ndarray) -> tuple[float, str]:
    """The factor by which the optimizer's gradient is a rescaling of the backward's, and a verdict:
    'none' (no change), 'uniform', 'power-of-two' (uniform, as an AMP unscale would be) or 'non-uniform'."""
    usable = usable & np.isfinite(true_sq) & np.isfinite(pre_sq) & (true_sq > 0)
    if not usable.any():
        return math.nan, "none"
    ratio = np.sqrt(pre_sq[usable] / true_sq[usable])
    middle = float(np.median(ratio))
    if np.max(np.abs(ratio - middle)) > CLIP_TOLERANCE * max(middle, 1e-30):
        return math.nan, "non-uniform"
    if abs(middle - 1.0) <= 1e-6:
        return math.nan, "none"
    if middle < 0.5 and abs(math.log2(middle) - round(math.log2(middle))) < 1e-6:
        return middle, "power-of-two"
    return middle, "uniform"


def step_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The per-step part: fixed columns typed, then learning rates, probe columns and logged scalars."""
    frame = pd.DataFrame(sorted(rows, key=lambda r: r["step"]))
    return frame.astype({"step": "int64", "recorded": "bool", "skipped": "bool", "clip_factor": "float64"})
