"""Runs as TensorBoard scalars, so a run can be looked at next to the user's own logs (and in the viewers that
import TensorBoard logs).

``export_tensorboard(runs, out_dir)`` writes one TensorBoard run per dynamics run, ``out_dir/<run>``, with
event files written by TensorBoard's writer (``torch.utils.tensorboard.SummaryWriter``, which needs the
``tensorboard`` package: ``pip install 'dynamics[tensorboard]'``). Runs are read through :mod:`dynamics.store`
and every number is derived by :mod:`dynamics.analysis`, so the scalars are the report's numbers:

==============================  ===========================================================================
tag                             value at each recorded step
==============================  ===========================================================================
``grad_norm/<view>``            √Σ‖g‖² over the view's tensors (``shared`` is a view here)
``learning_speed/<view>``       Σ‖g‖² / Σ‖θ‖²
``loss_reduction/<view>``       −Σ lca, cumulative over the recorded steps
``loss_reduction_share/<view>`` the view's part of the cumulative loss reduction of all views
``clip_factor``                 the gradient clipping factor (steps where clipping acted)
``lr/<group>``                  each parameter group's learning rate
``probe/<column>``              the probe's losses and residuals (when a probe was used)
``<name>``                      every scalar given to ``rec.log`` (``loss``, ``val_auc``, ...)
==============================  ===========================================================================

Steps the analysis excludes (skipped by the optimizer, non-finite) have no per-view value; NaN is never
written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..schema import LR_PREFIX, PROBE_PREFIX, STEP_COLUMNS
from ._common import require

__all__ = ["export_tensorboard", "tensorboard_scalars", "VIEW_SCALARS"]

# tag prefix -> column of dynamics.analysis.view_dynamics
VIEW_SCALARS = {"grad_norm": "grad_norm", "learning_speed": "learning_speed", "loss_reduction": "loss_reduction",
                "loss_reduction_share": "share"}
_EVENT_FILES = "events.out.tfevents.*"


def _step_tag(column: str) -> str | None:
    """The tag of a per-step column (None: not exported)."""
    if column in STEP_COLUMNS:
        return "clip_factor" if column == "clip_factor" else None
    if column.startswith(LR_PREFIX):
        return f"lr/{column[len(LR_PREFIX):]}"
    if column.startswith(PROBE_PREFIX):
        return f"probe/{column[len(PROBE_PREFIX):]}"
    return column


def tensorboard_scalars(per_param: pd.DataFrame, per_step: pd.DataFrame) -> pd.DataFrame:
    """One run's scalars as a long table ``tag``, ``step``, ``value`` (finite values only), in tag order."""
    from ..analysis import view_dynamics  # downstream of the analysis; loaded when used

    dynamics = view_dynamics(per_param, per_step)
    parts = []
    for prefix, column in VIEW_SCALARS.items():
        part = dynamics[["view", "step", column]].rename(columns={column: "value"})
        parts.append(part.assign(tag=prefix + "/" + part["view"].astype(str)).drop(columns="view"))
    for column in per_step.columns:
        tag = _step_tag(str(column))
        if tag is None or not pd.api.types.is_numeric_dtype(per_step[column]) \
                or pd.api.types.is_bool_dtype(per_step[column]):
            continue
        parts.append(pd.DataFrame({"tag": tag, "step": per_step["step"], "value": per_step[column]}))
    out = pd.concat(parts, ignore_index=True)[["tag", "step", "value"]]
    out = out[np.isfinite(out["value"].to_numpy(float))]
    return out.astype({"step": "int64", "value": "float64"}).sort_values(["tag", "step"], kind="stable",
                                                                          ignore_index=True)


def _target(out_dir: Path, label: str, overwrite: bool) -> Path:
    """The TensorBoard run directory of one run; an earlier export there is refused, or removed if asked."""
    parts = [p for p in Path(label).parts if p not in (os.sep, "..", ".")]  # a path label stays inside out_dir
    target = out_dir.joinpath(*parts)
    old = sorted(target.glob(_EVENT_FILES)) if target.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{target} already holds TensorBoard event files (an earlier export?); pass "
                              f"overwrite=True (--overwrite) to replace them")
    for path in old:
        path.unlink()
    return target


def export_tensorboard(runs: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                       overwrite: bool = False) -> list[Path]:
    """Write each run's scalars (see the module docstring) to ``out_dir/<run>``; returns those directories.

    ``runs``: run directories or globs, as :func:`dynamics.load_runs` takes them; ``<run>`` is the run's
    label there (its directory name, or its path when two share a name). An ``out_dir/<run>`` that already
    holds event files is refused unless ``overwrite``, which replaces them.
    """
    require("tensorboard", "tensorboard", "dynamics.integrations.tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from .. import store

    paths = store.expand_runs(runs)
    out_dir = Path(out_dir)
    written = []
    for path, label in zip(paths, store.run_labels(paths)):
        scalars = tensorboard_scalars(*store.load(path))
        target = _target(out_dir, label, overwrite)
        writer = SummaryWriter(log_dir=str(target))
        try:
            for tag, step, value in zip(scalars["tag"], scalars["step"].tolist(), scalars["value"].tolist()):
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()
        written.append(target)
    return written
