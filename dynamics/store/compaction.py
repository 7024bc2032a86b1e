"""Compaction: many small committed flushes merged into a few large parts, atomically.

Consecutive commit records are packed into groups of at most :data:`FILE_ROWS` rows (of their largest table);
each group of two or more becomes one part per table, streamed in row groups of :data:`ROW_GROUP` rows (so memory
stays bounded), and one commit record covering the group's flushes, which supersedes the group's records in a
single rename (see :mod:`dynamics.store.commits`). Only then are the old records and parts removed. A crash at
any point leaves either the old records or the new one trusted, never both and never neither; the leftovers
are removed at the next resume or compaction. Every input part is verified as loading verifies it, so damage
is reported (naming the file), never merged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pyarrow as pa

from ..schema import TableSpec
from . import commits as records
from . import parts
from .rundir import RunStoreError

FILE_ROWS = 8 * 1024 * 1024   # rows per compacted file: a 234,500-step run of 138 tensors gives 4 files
ROW_GROUP = 1024 * 1024


def plan(trusted: Sequence[records.Commit], file_rows: int | None = None) -> list[list[records.Commit]]:
    """Groups of consecutive records to merge (groups of one record are left as they are)."""
    file_rows = FILE_ROWS if file_rows is None else file_rows
    groups: list[list[records.Commit]] = []
    current: list[records.Commit] = []
    rows = 0
    for commit in trusted:
        size = max((sum(e.rows for e in entries) for entries in commit.parts.values()), default=0)
        if current and rows + size > file_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(commit)
        rows += size
    groups.append(current)
    return [g for g in groups if len(g) > 1]


def _chunks(run_dir: Path, group: Sequence[records.Commit], spec: TableSpec, *, run_id: str,
            n_params: int) -> Iterator[pa.Table]:
    """The group's verified parts of ``table``, concatenated into row groups of about ROW_GROUP rows."""
    pending: list[pa.Table] = []
    rows = 0
    for commit in group:
        for entry in commit.parts.get(spec.name, ()):
            pending.append(parts.read_part(run_dir, entry, run_id=run_id, spec=spec, flushes=commit.flushes,
                                           record=commit.name, n_params=n_params))
            rows += pending[-1].num_rows
            if rows >= ROW_GROUP:
                yield pa.concat_tables(pending, promote_options="default")
                pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending, promote_options="default")


def _schema(run_dir: Path, group: Sequence[records.Commit], table: str) -> pa.Schema:
    """The union of the group's part schemas, in order of first appearance (from the files' footers)."""
    import pyarrow.parquet as pq
    schemas = [pq.read_schema(run_dir / e.file).remove_metadata() for c in group for e in c.parts.get(table, ())]
    return pa.unify_schemas(schemas)


def merge(run_dir: Path, group: Sequence[records.Commit], *, run_id: str, n_params: int,
          tables: Mapping[str, TableSpec]) -> records.Commit:
    """Write the group's merged parts and the one record that commits them; returns that record."""
    flushes = (group[0].flushes[0], group[-1].flushes[1])
    merged: dict[str, list[parts.PartEntry]] = {}
    names: list[str] = []
    try:
        for table in dict.fromkeys(t for c in group for t in c.parts):
            entries = [e for c in group for e in c.parts.get(table, ())]
            if not entries:
                continue
            name = f"{table}/part-{flushes[0]:06d}-{flushes[1]:06d}.parquet"
            steps = (min(e.steps[0] for e in entries), max(e.steps[1] for e in entries))
            merged[table] = [parts.write_part(
                run_dir, name, _chunks(run_dir, group, _spec(tables, table, group), run_id=run_id, n_params=n_params),
                _schema(run_dir, group, table), run_id=run_id, table=table, flushes=flushes, steps=steps,
                rows=sum(e.rows for e in entries))]
            names.append(name)
        parts.fsync_tables(run_dir, names)
        return records.write_commit(run_dir, run_id, flushes, merged)
    except BaseException:
        for name in names:
            remove(run_dir / name)
        raise


def _spec(tables: Mapping[str, TableSpec], table: str, group: Sequence[records.Commit]) -> TableSpec:
    if table not in tables:
        raise RunStoreError(f"{group[0].path}: commits a {table!r} table that meta.json does not declare")
    return tables[table]


def compact(run_dir: Path, trusted: Sequence[records.Commit], *, run_id: str, n_params: int,
            tables: Mapping[str, TableSpec], file_rows: int | None = None) -> list[records.Commit]:
    """Merge what :func:`plan` groups, then remove what the new records supersede; returns the trusted records."""
    result = list(trusted)
    for group in plan(trusted, file_rows):
        commit = merge(run_dir, group, run_id=run_id, n_params=n_params, tables=tables)
        start = result.index(group[0])
        result[start:start + len(group)] = [commit]
    for path in records.unreferenced(run_dir, result, tuple(tables)):
        remove(path)
    return result


def remove(path: Path) -> None:
    """Remove a file of the writer's own, if it can (best effort)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a leftover is ignored by readers and removed by the next writer
