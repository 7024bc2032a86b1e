"""The run directory and its ``meta.json``; the writer is :mod:`dynamics.store.writer`, the loaders are in
:mod:`dynamics.store.loading`.

Layout::

    RUN/meta.json                       schema version, run id, views, parameter table, model/optimizer, ...
    RUN/writer.lock                     while a writer has the run open: its pid, host, boot and start time
    RUN/commits/000000-000000.json      one record per committed flush (or per compaction of flushes a-b)
    RUN/params/part-000000.parquet      one row per recorded step × parameter tensor (ids, not names)
    RUN/steps/part-000000.parquet       one row per recorded (or logged) step
    RUN/attribution/, RUN/probe/        the per-view parts of shared tensors, the probe's per-tensor lca
    RUN/quarantine/<table>/             parts that verify but that no record names, moved aside at a resume

A flush is visible when, and only when, its commit record is: parts are written (temporary name, fsync,
rename) before it, and a part no record names is ignored by the loaders; when the run is resumed it is moved
to quarantine/ if it verifies, else removed (:mod:`dynamics.store.quarantine`). Loading never unpickles: JSON
and Parquet only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..schema import META_FILE, SCHEMA_VERSION


class RunStoreError(ValueError):
    """A run directory or one of its files cannot be used; the message names the path."""


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], Any], *, sync_dir: bool = True) -> None:
    """``write(tmp)``, fsync, rename over ``path``; a failure leaves ``path`` as it was and no temporary file.
    ``sync_dir``: make the rename durable now (a caller writing many files syncs their folders once instead)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_meta(run_dir: Path, meta: dict) -> None:
    """Write ``meta.json`` atomically."""
    text = json.dumps(meta, indent=1, sort_keys=False, default=str)
    write_atomically(Path(run_dir) / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_meta(run_dir: str | os.PathLike) -> dict:
    """The run's metadata, checked: a missing, unreadable or incomplete ``meta.json`` raises an error naming it
    and what is wrong."""
    path = Path(run_dir) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunStoreError(f"{path}: not a dynamics run (no {META_FILE})") from None
    except IsADirectoryError:
        raise RunStoreError(f"{path}: not a dynamics run ({META_FILE} is a directory)") from None
    except NotADirectoryError:
        raise RunStoreError(f"{run_dir}: not a dynamics run (not a directory)") from None
    except OSError as exc:
        raise RunStoreError(f"{path}: unreadable metadata ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise RunStoreError(f"{path}: unreadable metadata ({exc})") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunStoreError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        found = meta.get("schema_version") if isinstance(meta, dict) else meta
        raise RunStoreError(f"{path}: unsupported schema version {found!r} (this dynamics reads {SCHEMA_VERSION})")
    problem = meta_problem(meta)
    if problem:
        raise RunStoreError(f"{path}: {problem}")
    return meta


def meta_problem(meta: dict) -> str | None:
    """What keeps ``meta`` from describing a run's tables, or None."""
    if not isinstance(meta.get("run_id"), str) or not meta["run_id"]:
        return "no run id ('run_id')"
    views = meta.get("views")
    if not isinstance(views, list) or not all(isinstance(v, str) for v in views):
        return "no list of views ('views')"
    params = meta.get("parameters")
    if not isinstance(params, list) or not params:
        return "no parameter table ('parameters')"
    for i, p in enumerate(params):
        if not isinstance(p, dict):
            return f"parameter table entry {i} is not an object"
        for key, kind in (("name", str), ("view", str), ("layer", str), ("depth", int)):
            if not isinstance(p.get(key), kind) or isinstance(p.get(key), bool):
                return f"parameter table entry {i} has no {kind.__name__} {key!r}"
    names = [p["name"] for p in params]
    if len(set(names)) != len(names):
        return "parameter table names a tensor twice"
    return None
