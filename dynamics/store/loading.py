"""Read a run directory back as tidy pandas tables: ``load``, ``load_probe``, ``load_runs``."""
from __future__ import annotations

import glob as globlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..schema import DEFAULT_CONDITION, META_FILE, RULES, STEP_COLUMNS, LR_PREFIX, QUANTITIES, is_lr_column, probe_lca
from .rundir import RunStoreError, parts, read_meta


def _read_parts(run_dir: Path, table: str, n_params: int) -> pd.DataFrame | None:
    """All parts of a table, concatenated; a damaged part, or one naming a tensor the run does not have,
    raises an error naming the file."""
    frames = []
    for path in parts(run_dir, table):
        try:
            frames.append(pq.read_table(path).to_pandas())
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise RunStoreError(f"{path}: truncated or corrupt Parquet part ({exc})") from exc
        ids = frames[-1]["param_id"].to_numpy() if "param_id" in frames[-1] else np.array([], dtype=int)
        if len(ids) and (ids.min() < 0 or ids.max() >= n_params):
            raise RunStoreError(f"{path}: parameter ids outside the parameter table of {META_FILE}")
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def _category(values: Iterable, categories: Sequence[str]) -> pd.Categorical:
    return pd.Categorical(values, categories=list(dict.fromkeys(categories)))


def _labelled(raw: pd.DataFrame, info: pd.DataFrame, views: np.ndarray, view_categories: Sequence[str]) -> pd.DataFrame:
    """step, param, view, layer and depth of each row of a part table, names as categoricals."""
    ids = raw["param_id"].to_numpy()
    return pd.DataFrame({
        "step": raw["step"].astype("int64").to_numpy(),
        "param": _category(info["name"].to_numpy()[ids], info["name"]),
        "view": _category(views, view_categories),
        "layer": _category(info["layer"].to_numpy()[ids], info["layer"]),
        "depth": info["depth"].to_numpy()[ids].astype("int32"),
    })


def _split_shared(raw: pd.DataFrame, attribution: pd.DataFrame, group_of: np.ndarray) -> pd.DataFrame:
    """Replace each attributed tensor's row by one row per view (grad_sq, lca, cross: the view's part)."""
    ids = attribution["param_id"].unique()
    whole = raw[raw["param_id"].isin(ids)]
    per_view = attribution.merge(whole.drop(columns=["grad_sq", "lca"]), on=["step", "param_id"], how="inner",
                                 validate="many_to_one")
    per_view["finite"] = per_view["finite"] & np.isfinite(per_view["grad_sq"])
    per_view["attributed"] = True
    rest = raw[~raw["param_id"].isin(ids)]
    rest = rest.assign(attributed=False, cross=np.nan, view=group_of[rest["param_id"].to_numpy()])
    return pd.concat([rest, per_view], ignore_index=True)


def load(run_dir: str | os.PathLike, *, split_shared: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one run as two tidy DataFrames: ``(per_param, per_step)``.

    per_param columns: step, param, view, layer, depth, grad_sq, param_sq, update_sq, lca, finite, has_grad,
    attributed, cross. With ``split_shared`` (the default) a tensor of a module shared by several views
    (``attribute=``) appears once per view: grad_sq, lca and cross are that view's part, param_sq and
    update_sq are the tensor's (so they repeat across its views); without it, once, under its group label.
    per_step columns: step, recorded, skipped, clip_factor, lr_<group>..., then the scalars given to ``log``.
    Names are categorical; rows are sorted by step, then parameter order, then view.
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    info = pd.DataFrame(meta["parameters"])
    raw = _read_parts(run_dir, "params", len(info))
    if raw is None:
        raw = pd.DataFrame({c: pd.Series(dtype=t) for c, t in [("step", "int64"), ("param_id", "int32"),
                            ("grad_sq", "float64"), ("param_sq", "float64"), ("update_sq", "float64"),
                            ("lca", "float64"), ("finite", "bool"), ("has_grad", "bool")]})
    attribution = _read_parts(run_dir, "attribution", len(info)) if split_shared else None
    if attribution is not None:
        raw = _split_shared(raw, attribution, info["view"].to_numpy())
    else:
        raw = raw.assign(attributed=False, cross=np.nan, view=info["view"].to_numpy()[raw["param_id"].to_numpy()])
    present = set(raw["view"])
    view_order = [v for v in meta["views"] if attribution is None or v in present]
    per_param = _labelled(raw, info, raw["view"].to_numpy(), view_order)
    for column in QUANTITIES:
        per_param[column] = raw[column].astype("float64").to_numpy()
    for column in ("finite", "has_grad", "attributed"):
        per_param[column] = raw[column].astype("bool").to_numpy()
    per_param["cross"] = raw["cross"].astype("float64").to_numpy()
    per_param = per_param.sort_values(["step", "param", "view"], kind="stable", ignore_index=True)

    per_step = _read_parts(run_dir, "steps", len(info))
    if per_step is None:
        per_step = pd.DataFrame({"step": pd.Series(dtype="int64"), "recorded": pd.Series(dtype="bool"),
                                 "skipped": pd.Series(dtype="bool"), "clip_factor": pd.Series(dtype="float64")})
    per_step = _merge_step_rows(per_step)
    fixed = [c for c in STEP_COLUMNS if c in per_step]
    lrs = sorted((c for c in per_step if is_lr_column(c)), key=lambda c: int(c[len(LR_PREFIX):]))
    scalars = [c for c in per_step if c not in fixed and c not in lrs]
    per_step = per_step[fixed + lrs + scalars].sort_values("step", kind="stable", ignore_index=True)
    return per_param, per_step


def load_probe(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The probe's path-integrated lca per step and tensor: step, param, view, layer, depth, lca_first,
    lca_trapezoid, lca_simpson. The per-step losses and residuals are columns of ``load(...)[1]``."""
    run_dir = Path(run_dir)
    info = pd.DataFrame(read_meta(run_dir)["parameters"])
    raw = _read_parts(run_dir, "probe", len(info))
    if raw is None:
        raise RunStoreError(f"{run_dir}: no probe was recorded (attach(..., probe=ProbeBatch(...)))")
    out = _labelled(raw, info, info["view"].to_numpy()[raw["param_id"].to_numpy()], info["view"])
    for column in map(probe_lca, RULES):
        out[column] = raw[column].astype("float64").to_numpy()
    return out.sort_values(["step", "param"], kind="stable", ignore_index=True)


def _merge_step_rows(per_step: pd.DataFrame) -> pd.DataFrame:
    """One row per step: a step's quantities and the scalars logged for it may sit in consecutive parts."""
    if not per_step["step"].duplicated().any():
        return per_step
    grouped = per_step.groupby("step", sort=True)
    merged = grouped.first()  # first non-missing value of every column
    for column in ("recorded", "skipped"):
        merged[column] = grouped[column].any()
    return merged.reset_index()


def expand_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories from paths and globs (a glob the shell left alone, e.g. a quoted ``'runs/*'``, is
    expanded here, its matches sorted); in the order given, each directory once. A glob matching nothing,
    or no input at all, is an error."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    runs: list[Path] = []
    for item in items:
        text = str(item)
        matches = sorted(globlib.glob(text)) if globlib.has_magic(text) else [text]
        if not matches:
            raise RunStoreError(f"{text}: matches no run directory")
        runs += [Path(m) for m in matches]
    if not runs:
        raise RunStoreError("no run directories given")
    return list(dict.fromkeys(runs))


def run_labels(runs: Sequence[Path]) -> list[str]:
    """The ``run`` label of each directory: its name, or the full path when two directories share a name."""
    labels = [r.name for r in runs]
    return labels if len(set(labels)) == len(labels) else [str(r) for r in runs]


def load_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike], *,
              split_shared: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate several runs (each as :func:`load` reads it; paths and globs as :func:`expand_runs` takes
    them); adds ``run`` (:func:`run_labels`), ``condition`` and ``seed`` from metadata."""
    per_params, per_steps = [], []
    runs = expand_runs(paths_or_glob)
    for run_dir, label in zip(runs, run_labels(runs)):
        meta = read_meta(run_dir)
        per_param, per_step = load(run_dir, split_shared=split_shared)
        seed = meta.get("seed")
        for frame in (per_param, per_step):
            frame.insert(0, "seed", pd.array([seed] * len(frame), dtype="Int64"))
            frame.insert(0, "condition", meta.get("condition") or DEFAULT_CONDITION)
            frame.insert(0, "run", label)
        per_params.append(per_param)
        per_steps.append(per_step)
    per_param = pd.concat(per_params, ignore_index=True)
    per_step = pd.concat(per_steps, ignore_index=True)
    for frame in (per_param, per_step):
        for column in ("run", "condition"):
            frame[column] = pd.Categorical(frame[column], categories=list(dict.fromkeys(frame[column])))
    for column in ("param", "view", "layer"):
        categories = list(dict.fromkeys(c for f in per_params for c in f[column].cat.categories))
        per_param[column] = pd.Categorical(per_param[column].astype("object"), categories=categories)
    return per_param, per_step
