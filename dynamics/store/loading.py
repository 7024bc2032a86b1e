"""Read a run directory back as tidy pandas tables (``load``, ``load_probe``, ``load_runs``), or as checked arrays
one run at a time (``read_rows``, ``read_runs``) for callers that reduce each run before anything is concatenated."""
from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..schema import (ATTRIBUTION, DEFAULT_CONDITION, LR_PREFIX, PARAM_FLAGS, PARAM_ID, PARAMS, PROBE, PROBE_PREFIX,
                      QUANTITIES, STEP_COLUMNS, STEPS, TableSpec, is_lr_column, tables_of)
from . import commits as records
from . import completeness, parts
from .rundir import META_FILE, RunStoreError, read_meta


def _verified(run_dir: Path, meta: dict, tables: Sequence[str]) -> dict[str, pa.Table | None]:
    """Each table's committed parts, verified and concatenated (None: no part). A part that vanished because a
    concurrent compaction merged it is found by reading the commit records again."""
    n_params = len(meta["parameters"])
    specs = tables_of(meta)
    for table in tables:
        if (run_dir / table).exists() and not (run_dir / table).is_dir():
            raise RunStoreError(f"{run_dir / table}: not a directory (it should hold the run's {table} parts)")
    for attempt in range(3):
        trusted = records.read_commits(run_dir, meta["run_id"])
        missing = completeness.refusal(run_dir, meta, trusted)
        if missing:  # fewer records than meta.json says were committed: never a silently shorter run
            raise RunStoreError(missing)
        try:
            out = {}
            for table in tables:
                found = [parts.read_part(run_dir, e, run_id=meta["run_id"], spec=specs[table], flushes=c.flushes,
                                         record=c.name, n_params=n_params)
                         for c in trusted for e in c.parts.get(table, ())]
                out[table] = pa.concat_tables(found, promote_options="default") if found else None
            return out
        except parts.MissingPartError:
            if attempt == 2 or records.read_commits(run_dir, meta["run_id"]) == trusted:
                raise
    raise AssertionError("unreachable")


def _columns(table: pa.Table, names: Iterable[str]) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy() for name in names}


def _empty(spec: TableSpec) -> dict[str, np.ndarray]:
    return {name: np.array([], dtype={"int64": np.int64, "int32": np.int32, "double": np.float64,
                                     "bool": bool, "string": object}[kind]) for name, kind in spec.columns}


def _codes(values: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """The index of each value in ``categories`` (-1: not a category, NaN in the categorical)."""
    where = {c: i for i, c in enumerate(categories)}
    return np.array([where.get(v, -1) for v in values], dtype=np.int32)


class _Params:
    """The per-param table's columns as arrays, before the names are attached; ``labels[codes]`` is each row's
    view label (integer codes: a million strings would cost more than the rest of loading)."""

    def __init__(self, raw: dict[str, np.ndarray], group_of: Sequence[str]) -> None:
        self.columns = {**raw, "attributed": np.zeros(len(raw["step"]), bool),
                        "cross": np.full(len(raw["step"]), np.nan)}
        self.labels = list(dict.fromkeys(group_of))
        self.codes = _codes(group_of, self.labels)[raw[PARAM_ID]]

    def split(self, where: str, attribution: pa.Table, spec: TableSpec, n_params: int) -> None:
        """Replace each attributed tensor's rows by its per-view rows: grad_sq, lca and cross are the view's
        part, param_sq and update_sq the tensor's; ``finite`` also requires the part to be finite."""
        raw = self.columns
        part = _columns(attribution, [c for c, _ in spec.columns if c != "view"])
        views = attribution.column("view").combine_chunks().dictionary_encode()
        key = raw["step"] * n_params + raw[PARAM_ID]
        order = None if (np.diff(key) > 0).all() else np.argsort(key, kind="stable")
        sorted_key = key if order is None else key[order]
        wanted = part["step"] * n_params + part[PARAM_ID]
        at = np.minimum(np.searchsorted(sorted_key, wanted), max(len(key) - 1, 0))
        if len(wanted) and (not len(key) or (sorted_key[at] != wanted).any()):
            raise RunStoreError(f"{where}: attribution rows for steps and tensors the params parts do not have")
        at = at if order is None else order[at]
        part.update({"param_sq": raw["param_sq"][at], "update_sq": raw["update_sq"][at],
                     "finite": raw["finite"][at] & np.isfinite(part["grad_sq"]), "has_grad": raw["has_grad"][at],
                     "attributed": np.ones(len(at), bool)})
        rest = ~np.isin(raw[PARAM_ID], np.unique(part[PARAM_ID]))
        self.columns = {c: np.concatenate([raw[c][rest], part[c]]) for c in raw}
        names = views.dictionary.to_pylist()
        self.labels += [v for v in names if v not in self.labels]
        view_codes = _codes(names, self.labels)[views.indices.to_numpy(zero_copy_only=False)]
        self.codes = np.concatenate([self.codes[rest], view_codes])

    def present(self) -> set[str]:
        return {self.labels[i] for i in np.unique(self.codes)}


@dataclass
class RunRows:
    """One run's per-param rows as arrays, read, checked and split as :func:`load` reads them, before any pandas
    table: ``columns`` (the params part columns, ``attributed``, ``cross``), ``view_codes`` (each row's index into
    ``view_order``, -1 for a group label outside it), the tidy per-step table and ``meta.json``."""
    run_dir: Path
    meta: dict
    columns: dict[str, np.ndarray]
    view_codes: np.ndarray
    view_order: list[str]
    per_step: pd.DataFrame


def read_rows(run_dir: str | os.PathLike, *, split_shared: bool = True) -> RunRows:
    """One run's committed, verified rows as :class:`RunRows` (the checks of :func:`load`; errors name the file)."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    info = meta["parameters"]
    specs = tables_of(meta)
    tables = _verified(run_dir, meta, (PARAMS, STEPS, ATTRIBUTION) if split_shared else (PARAMS, STEPS))
    params = tables[PARAMS]
    rows = _Params(_empty(specs[PARAMS]) if params is None else _columns(params, dict(specs[PARAMS].columns)),
                   [p["view"] for p in info])
    attributed = tables.get(ATTRIBUTION) is not None
    if attributed:
        rows.split(str(run_dir / ATTRIBUTION), tables[ATTRIBUTION], specs[ATTRIBUTION], len(info))
    view_order = list(dict.fromkeys(v for v in meta["views"] if not attributed or v in rows.present()))
    view_codes = _codes(rows.labels, view_order)[rows.codes] if len(rows.codes) else rows.codes
    per_step = _step_table(tables[STEPS])
    _check_recorded(run_dir, per_step, rows.columns["step"])
    return RunRows(run_dir, meta, rows.columns, view_codes, view_order, per_step)


def load(run_dir: str | os.PathLike, *, split_shared: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one run as two tidy DataFrames: ``(per_param, per_step)``.

    per_param columns: step, param, view, layer, depth, grad_sq, param_sq, update_sq, lca, finite, has_grad,
    attributed, cross. With ``split_shared`` (the default) a tensor of a module shared by several views
    (``attribute=``) appears once per view: grad_sq, lca and cross are that view's part, param_sq and
    update_sq are the tensor's (so they repeat across its views); without it, once, under its group label.
    per_step columns: step, recorded, skipped, clip_factor, lr_<group>..., then the scalars given to ``log``.
    Names are categorical; rows are sorted by step, then parameter order, then view.

    Only committed flushes are read, each part verified (checksums, run identity, columns and types, step
    ranges, no repeated rows); any violation raises :class:`RunStoreError` naming the file.
    """
    return _frames(read_rows(run_dir, split_shared=split_shared))


def _frames(rows: RunRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy ``(per_param, per_step)`` tables of one run's rows."""
    info = rows.meta["parameters"]
    columns, view_codes = rows.columns, rows.view_codes
    order = _row_order(columns["step"], columns[PARAM_ID], view_codes)
    if order is not None:
        columns = {c: v[order] for c, v in columns.items()}
        view_codes = view_codes[order]
    per_param = pd.DataFrame({**_labels(info, columns["step"], columns[PARAM_ID]),
                              "view": pd.Categorical.from_codes(view_codes, categories=rows.view_order)})
    per_param = per_param[["step", "param", "view", "layer", "depth"]]
    for column in (*QUANTITIES, "finite", "has_grad", "attributed", "cross"):
        per_param[column] = columns[column].astype("bool" if column in PARAM_FLAGS else "float64")
    return per_param, rows.per_step


def _labels(info: Sequence[dict], steps: np.ndarray, ids: np.ndarray) -> dict:
    """step, param, layer and depth columns of rows naming tensors by id."""
    layers, layer_of, depth_of = param_layers(info)
    return {"step": steps.astype("int64"),
            "param": pd.Categorical.from_codes(ids, categories=[p["name"] for p in info]),
            "layer": pd.Categorical.from_codes(layer_of[ids], categories=layers), "depth": depth_of[ids]}


def param_layers(info: Sequence[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The layers of meta.json's parameter table in order, and per tensor id its layer's index and its depth."""
    layers = list(dict.fromkeys(p["layer"] for p in info))
    return (layers, _codes([p["layer"] for p in info], layers),
            np.array([p["depth"] for p in info], dtype=np.int32))


def _row_order(step: np.ndarray, ids: np.ndarray, view_codes: np.ndarray) -> np.ndarray | None:
    """The permutation sorting rows by step, tensor, view (a missing view last); None when already sorted."""
    views = np.where(view_codes < 0, np.iinfo(np.int32).max, view_codes)
    if len(step) < 2:
        return None
    same = (np.diff(step) == 0) & (np.diff(ids) == 0)
    ascending = (np.diff(step) > 0) | ((np.diff(step) == 0) & (np.diff(ids) > 0)) | (same & (np.diff(views) > 0))
    return None if ascending.all() else np.lexsort((views, ids, step))


def _step_table(steps: pa.Table | None) -> pd.DataFrame:
    """The per-step table: one row per step, the fixed columns first, then learning rates, then the rest."""
    if steps is None:
        per_step = pd.DataFrame({"step": pd.Series(dtype="int64"), "recorded": pd.Series(dtype="bool"),
                                 "skipped": pd.Series(dtype="bool"), "clip_factor": pd.Series(dtype="float64")})
    else:
        per_step = steps.to_pandas()
    per_step = _merge_step_rows(per_step)
    fixed = [c for c in STEP_COLUMNS if c in per_step]
    lrs = sorted((c for c in per_step if is_lr_column(c)), key=lambda c: int(c[len(LR_PREFIX):]))
    scalars = [c for c in per_step if c not in fixed and c not in lrs]
    return per_step[fixed + lrs + scalars].sort_values("step", kind="stable", ignore_index=True)


def _check_recorded(run_dir: Path, per_step: pd.DataFrame, param_steps: np.ndarray) -> None:
    """The params table holds exactly the steps the steps table calls recorded."""
    recorded = per_step.loc[per_step["recorded"], "step"].to_numpy()
    measured = np.unique(param_steps)
    if len(recorded) != len(measured) or (recorded != measured).any():
        only_params = np.setdiff1d(measured, recorded)[:5].tolist()
        only_steps = np.setdiff1d(recorded, measured)[:5].tolist()
        raise RunStoreError(f"{run_dir}: the params parts and the steps parts disagree on the recorded steps "
                            f"(in params only: {only_params}; in steps only: {only_steps})")


def load_table(run_dir: str | os.PathLike, table: str) -> pd.DataFrame:
    """A per-tensor table of one run (the probe's, or a plug-in quantity's) as a tidy frame: step, param, view,
    layer, depth, then the table's value columns, sorted by step and parameter order. Each part is verified
    as :func:`load` verifies it; a table the run does not declare, or never wrote, is an error naming it."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    info = meta["parameters"]
    specs = tables_of(meta)
    spec = specs.get(table)
    if spec is None or spec.key != ("step", PARAM_ID):
        per_tensor = sorted(t for t, s in specs.items() if s.key == ("step", PARAM_ID) and t != PARAMS)
        raise RunStoreError(f"{run_dir}: no per-tensor table {table!r} (this run's: {per_tensor}; "
                            f"the params table is read by load())")
    found = _verified(run_dir, meta, (table,))[table]
    if found is None:
        raise RunStoreError(f"{run_dir}: no {table!r} rows were recorded")
    raw = _columns(found, [c for c, _ in spec.columns])
    order = _row_order(raw["step"], raw[PARAM_ID], np.zeros(len(raw["step"]), np.int32))
    if order is not None:
        raw = {c: v[order] for c, v in raw.items()}
    ids = raw[PARAM_ID]
    views = list(dict.fromkeys(p["view"] for p in info))
    out = pd.DataFrame({**_labels(info, raw["step"], ids),
                        "view": pd.Categorical.from_codes(_codes([p["view"] for p in info], views)[ids],
                                                          categories=views)})
    out = out[["step", "param", "view", "layer", "depth"]]
    for column in spec.values:
        out[column] = raw[column]
    return out


def load_probe(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The probe's path-integrated lca per step and tensor: step, param, view, layer, depth, lca_first,
    lca_trapezoid, lca_simpson. The per-step losses and residuals are columns of ``load(...)[1]``."""
    if not read_meta(run_dir).get("probe"):
        raise RunStoreError(f"{run_dir}: no probe was recorded (attach(..., probe=ProbeBatch(...)))")
    return load_table(run_dir, PROBE)


def _merge_step_rows(per_step: pd.DataFrame) -> pd.DataFrame:
    """One row per step: a step's quantities and the scalars logged for it may sit in different parts (a
    resumed run's log before its first backward pass belongs to the step it resumes after). A logged scalar
    that several parts hold is the mean of their values, each part's value (already a mean over its
    micro-batches) counting once: the parts store no counts. Every other column keeps its one value."""
    if not per_step["step"].duplicated().any():
        return per_step
    grouped = per_step.groupby("step", sort=True)
    merged = grouped.first()  # first non-missing value of every column
    for column in ("recorded", "skipped"):
        merged[column] = grouped[column].any()
    logged = [c for c in merged.columns if c not in STEP_COLUMNS and not is_lr_column(c)
              and not c.startswith(PROBE_PREFIX)]
    if logged:
        merged[logged] = grouped[logged].mean()  # NaN (not logged in that part) is left out
    return merged.reset_index()


def expand_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories from paths and globs (a glob the shell left alone, e.g. a quoted ``'runs/*'``, is
    expanded here, its matches sorted); in the order given, each directory once. A glob matching nothing,
    no input at all, or a folder that is not a run but holds runs (``runs`` for ``runs/*``) is an error."""
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
    for run in runs:
        _not_a_folder_of_runs(run)
    return list(dict.fromkeys(runs))


def _not_a_folder_of_runs(path: Path) -> None:
    """Refuse a folder without ``meta.json`` whose sub-folders are runs, saying how many and the glob to use."""
    if not path.is_dir() or (path / META_FILE).exists():
        return
    try:
        held = sum(1 for child in path.iterdir() if (child / META_FILE).is_file())
    except OSError:
        return  # the reader's own error names what is wrong
    if held:
        raise RunStoreError(f"{path}: a folder holding {held} run{'s' if held != 1 else ''}, not a run itself; "
                            f"pass the runs, e.g. {path}/* (quoted, or let the shell expand it)")


def run_labels(runs: Sequence[Path]) -> list[str]:
    """The ``run`` label of each directory: its name, or the full path when two directories share a name."""
    labels = [r.name for r in runs]
    return labels if len(set(labels)) == len(labels) else [str(r) for r in runs]


def read_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike], *,
              split_shared: bool = True) -> Iterator[tuple[str, RunRows]]:
    """Each run (paths and globs as :func:`expand_runs` takes them) with its ``run`` label (:func:`run_labels`),
    read by :func:`read_rows` one at a time, so that a caller reducing each run holds one run in memory."""
    runs = expand_runs(paths_or_glob)
    for run_dir, label in zip(runs, run_labels(runs)):
        yield label, read_rows(run_dir, split_shared=split_shared)


def tag_run(frame: pd.DataFrame, label: str, meta: dict) -> pd.DataFrame:
    """``frame`` with the ``run``, ``condition`` and ``seed`` columns of one run in front (in place)."""
    frame.insert(0, "seed", pd.array([meta.get("seed")] * len(frame), dtype="Int64"))
    frame.insert(0, "condition", meta.get("condition") or DEFAULT_CONDITION)
    frame.insert(0, "run", label)
    return frame


def concat_runs(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Tables of :func:`tag_run` stacked, ``run`` and ``condition`` categorical in the order the runs came."""
    out = pd.concat(frames, ignore_index=True)
    for column in ("run", "condition"):
        out[column] = pd.Categorical(out[column], categories=list(pd.unique(out[column])))
    return out


def load_runs(paths_or_glob: str | os.PathLike | Iterable[str | os.PathLike], *,
              split_shared: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate several runs (each as :func:`load` reads it; paths and globs as :func:`expand_runs` takes
    them); adds ``run`` (:func:`run_labels`), ``condition`` and ``seed`` from metadata."""
    per_params, per_steps = [], []
    for label, rows in read_runs(paths_or_glob, split_shared=split_shared):
        per_param, per_step = _frames(rows)
        per_params.append(tag_run(per_param, label, rows.meta))
        per_steps.append(tag_run(per_step, label, rows.meta))
    per_param, per_step = concat_runs(per_params), concat_runs(per_steps)
    for column in ("param", "view", "layer"):
        categories = list(dict.fromkeys(c for f in per_params for c in f[column].cat.categories))
        per_param[column] = pd.Categorical(per_param[column].astype("object"), categories=categories)
    return per_param, per_step
