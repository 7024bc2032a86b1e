"""The run directory: ``meta.json`` plus append-only Parquet parts, written atomically (the loaders are in
:mod:`dynamics.store.loading`).

Layout::

    RUN/meta.json                     schema version, views, parameter table, model/optimizer, config, ...
    RUN/params/part-000000.parquet    one row per recorded step × parameter tensor (ids, not names)
    RUN/steps/part-000000.parquet     one row per recorded (or logged) step

Every file is written to a temporary name and renamed, so a killed process leaves only complete parts (and at
worst a stray ``*.tmp`` file, which loading ignores). Loading never unpickles: JSON and Parquet only.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..schema import META_FILE, SCHEMA_VERSION, TABLES

_PART = re.compile(r"^part-(\d{6})\.parquet$")


class RunStoreError(ValueError):
    """A run directory or one of its files cannot be used; the message names the path."""


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_meta(run_dir: Path, meta: dict) -> None:
    """Write ``meta.json`` atomically."""
    text = json.dumps(meta, indent=1, sort_keys=False, default=str)
    _write_atomically(run_dir / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_meta(run_dir: str | os.PathLike) -> dict:
    """The run's metadata; a missing or unreadable ``meta.json`` raises an error naming it."""
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise RunStoreError(f"{path}: not a dynamics run (no {META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunStoreError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise RunStoreError(f"{path}: unsupported schema version {meta.get('schema_version') if isinstance(meta, dict) else meta!r}")
    return meta


def parts(run_dir: Path, table: str) -> list[Path]:
    """The committed part files of one table, in order."""
    folder = run_dir / table
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.match(p.name))


def prepare_run_dir(out: str | os.PathLike, *, resume: bool) -> tuple[Path, dict | None, dict[str, int]]:
    """Create (or, with ``resume``, reopen) a run directory; never overwrite an existing run silently.

    Returns the path, the existing metadata when resuming, and the next part number per table.
    """
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunStoreError(f"{run_dir}: exists and is not a directory")
    old_meta = None
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not resume:
            raise RunStoreError(f"{run_dir}: run directory already exists and is not empty; pass resume=True "
                                f"to append to it, or choose another out=")
        old_meta = read_meta(run_dir)
    for table in TABLES:
        (run_dir / table).mkdir(parents=True, exist_ok=True)
    next_part = {t: (int(_PART.match(p[-1].name).group(1)) + 1 if (p := parts(run_dir, t)) else 0) for t in TABLES}
    return run_dir, old_meta, next_part


def write_part(run_dir: Path, table: str, number: int, frame: pd.DataFrame) -> Path:
    """Write one Parquet part atomically and return its path."""
    path = run_dir / table / f"part-{number:06d}.parquet"
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    _write_atomically(path, lambda tmp: pq.write_table(arrow, tmp))
    return path


def last_step(run_dir: Path) -> int | None:
    """The largest step in the run's per-step parts (read as one column), or None when there are none."""
    found = [pq.read_table(path, columns=["step"]).column("step") for path in parts(run_dir, "steps")]
    steps = [int(pc.max(column).as_py()) for column in found if len(column)]
    return max(steps) if steps else None
