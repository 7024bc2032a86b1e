"""One Parquet part: written with page checksums and the run's identity, read back only after every check.

A part's key-value metadata (key ``dynamics``) holds JSON: the run id, the table, the flushes it holds (first,
last) and its step range and row count. Its commit record (:mod:`dynamics.store.commits`) holds the same plus
the file's size and CRC-32. Reading a part checks, in order: the bytes against the commit (size, CRC-32), the
Parquet pages against their own checksums, the identity and ranges against the commit, the columns and their
types against the table's declaration (:class:`dynamics.schema.TableSpec`), and the rows (step range, no repeated
key, every tensor present at every step of a dense table). Any violation raises :class:`RunStoreError` naming the file.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..schema import PARAM_ID, RESERVED_SCALARS, TableSpec
from .rundir import RunStoreError, fsync_dir, write_atomically

KEY = b"dynamics"
_STRINGS = (pa.string(), pa.large_string())


class MissingPartError(RunStoreError):
    """A committed part is not there (a concurrent compaction may have merged it: read the records again)."""


@dataclass(frozen=True)
class PartEntry:
    """A committed part as its commit record lists it (``file`` relative to the run directory)."""

    file: str
    rows: int
    steps: tuple[int, int]
    size: int
    crc32: int

    def as_record(self) -> dict:
        return {"file": self.file, "rows": self.rows, "steps": list(self.steps), "bytes": self.size,
                "crc32": self.crc32}


def to_arrow(spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
    """A part frame as Arrow, its columns checked (a recorder bug must not reach the disk)."""
    arrow = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)  # no pandas
    problem = schema_problem(spec, arrow.schema)
    if problem:
        raise RunStoreError(f"{spec.name} part not written: {problem}")
    return arrow


def write_part(run_dir: Path, name: str, chunks: Iterable[pa.Table], schema: pa.Schema, *, run_id: str,
               table: str, flushes: tuple[int, int], steps: tuple[int, int], rows: int) -> PartEntry:
    """Write ``chunks`` (tables of ``schema``, missing columns as nulls; one row group per chunk) as
    ``run_dir/name``, atomically, with page checksums (:func:`fsync_tables` then makes the renames durable).
    Returns the part's commit entry."""
    identity = {"run_id": run_id, "table": table, "flushes": list(flushes), "steps": list(steps), "rows": rows}
    schema = schema.with_metadata({**(schema.metadata or {}), KEY: json.dumps(identity).encode()})
    written: list[bytes] = []

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
            for chunk in chunks:
                writer.write_table(conform(chunk, schema))
        written.append(tmp.read_bytes())

    write_atomically(run_dir / name, write, sync_dir=False)  # the folders are synced once per flush
    data = written[0]
    return PartEntry(name, rows, steps, len(data), zlib.crc32(data))


def conform(chunk: pa.Table, schema: pa.Schema) -> pa.Table:
    """``chunk`` with the columns of ``schema``, in its order; a column it lacks is all null."""
    if chunk.schema.remove_metadata().equals(schema.remove_metadata()):
        return chunk.replace_schema_metadata(schema.metadata)
    columns = [chunk.column(f.name).cast(f.type) if f.name in chunk.column_names else pa.nulls(chunk.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def step_range(arrow: pa.Table) -> tuple[int, int]:
    bounds = pc.min_max(arrow.column("step"))
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())


def schema_problem(spec: TableSpec, schema: pa.Schema) -> str | None:
    """What is wrong with a part's columns, or None: exactly the table's columns with their types (an open
    table, the steps: its fixed columns, then only float64 columns whose names are not reserved)."""
    expected = dict(spec.columns)
    found = {field.name: field.type for field in schema}
    missing = [c for c in expected if c not in found]
    if missing:
        return f"missing column(s) {missing}"
    for column, kind in expected.items():
        actual = found[column]
        ok = actual in _STRINGS or (pa.types.is_dictionary(actual) and actual.value_type in _STRINGS) \
            if kind == "string" else str(actual) == kind
        if not ok:
            return f"column {column!r} has type {actual}, expected {kind}"
    extra = [c for c in found if c not in expected]
    if not spec.open and extra:
        return f"unexpected column(s) {extra}"
    for column in extra:
        if column in RESERVED_SCALARS or column == PARAM_ID:
            return f"unexpected column {column!r} (a reserved name)"
        if found[column] != pa.float64():
            return f"column {column!r} has type {found[column]}, expected double (a per-step value)"
    return None


def read_part(run_dir: Path, entry: PartEntry, *, run_id: str, spec: TableSpec, flushes: tuple[int, int],
              record: str, n_params: int) -> pa.Table:
    """The checked contents of one committed part (see the module docstring for the checks)."""
    path = run_dir / entry.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingPartError(f"{path}: missing, though {record} commits it") from None
    except OSError as exc:
        raise RunStoreError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    if len(data) != entry.size or zlib.crc32(data) != entry.crc32:
        raise RunStoreError(f"{path}: damaged or replaced after it was committed ({len(data)} bytes, CRC-32 "
                            f"{zlib.crc32(data)}; {record} recorded {entry.size} bytes, CRC-32 {entry.crc32})")
    try:
        arrow = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise RunStoreError(f"{path}: truncated or corrupt Parquet part ({exc})") from exc
    _check_identity(path, arrow.schema.metadata or {}, run_id=run_id, table=spec.name, flushes=flushes,
                    entry=entry)
    problem = schema_problem(spec, arrow.schema)
    if problem:
        raise RunStoreError(f"{path}: {problem}")
    arrow = arrow.replace_schema_metadata(None)
    _check_rows(path, arrow, spec, entry, n_params)
    return arrow


def _check_identity(path: Path, metadata: dict, *, run_id: str, table: str, flushes: tuple[int, int],
                    entry: PartEntry) -> None:
    try:
        identity = json.loads(metadata[KEY])
    except (KeyError, ValueError):
        raise RunStoreError(f"{path}: not a dynamics part (no run identity in its metadata)") from None
    if identity.get("run_id") != run_id:
        raise RunStoreError(f"{path}: a part of another run (run id {identity.get('run_id')}; this run is {run_id})")
    expected = {"table": table, "flushes": list(flushes), "steps": list(entry.steps), "rows": entry.rows}
    for key, value in expected.items():
        if identity.get(key) != value:
            raise RunStoreError(f"{path}: its metadata says {key} {identity.get(key)!r}, its commit {value!r}")


def _check_rows(path: Path, arrow: pa.Table, spec: TableSpec, entry: PartEntry, n_params: int) -> None:
    """Rows within the declared step range; in a per-tensor table each key once, and in a dense one every
    tensor present at every step."""
    if arrow.num_rows != entry.rows or (arrow.num_rows and step_range(arrow) != entry.steps):
        raise RunStoreError(f"{path}: {arrow.num_rows} rows over steps {step_range(arrow) if arrow.num_rows else ()}"
                            f", its commit lists {entry.rows} rows over steps {entry.steps}")
    if PARAM_ID not in spec.key or not arrow.num_rows:
        return
    steps = arrow.column("step").to_numpy()
    ids = arrow.column(PARAM_ID).to_numpy()
    if ids.min() < 0 or ids.max() >= n_params:
        raise RunStoreError(f"{path}: parameter ids outside the parameter table of meta.json")
    key = steps * n_params + ids
    for column in spec.key:
        if column in ("step", PARAM_ID):
            continue
        codes = pc.dictionary_encode(arrow.column(column)).combine_chunks()
        key = key * max(len(codes.dictionary), 1) + codes.indices.to_numpy(zero_copy_only=False)
    if not (np.diff(key) > 0).all() and pd.Index(key).has_duplicates:
        raise RunStoreError(f"{path}: repeated rows (the same {', '.join(spec.key)} more than once)")
    if spec.dense:
        n_steps = np.count_nonzero(np.diff(steps)) + 1 if (np.diff(steps) >= 0).all() else len(np.unique(steps))
        if n_steps * n_params != arrow.num_rows:
            raise RunStoreError(f"{path}: {arrow.num_rows} rows for {n_steps} steps of {n_params} tensors: some "
                                f"tensors are missing at some steps")


def fsync_tables(run_dir: Path, names: list[str]) -> None:
    """Make the renames of parts durable before their commit record is written."""
    for folder in {str(Path(n).parent) for n in names}:
        fsync_dir(run_dir / folder)
