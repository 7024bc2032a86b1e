"""Parts no commit record names: which of them verify, and moving those aside instead of deleting them.

A part can be in a table's folder without a trusted commit record for three reasons: a compaction merged it
(its flushes are committed in the merged part: a duplicate, removed), a writer was killed before it committed
its flush, or the commit record was lost (damage). The last two cannot be told apart from the part alone, and
a part whose bytes and identity verify holds measured data, so the store never deletes one: ``resume=True``
moves it to ``RUN/quarantine/<table>/`` and lists it in ``meta.json["quarantined"]``. A file that does not
verify (a half-written part, another run's part) is not this run's data and is removed as before.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow.parquet as pq

from ..schema import QUARANTINE, TableSpec, tables_of
from . import commits as records
from . import parts
from .rundir import RunStoreError, fsync_dir

FOLDER = QUARANTINE


@dataclass(frozen=True)
class Orphan:
    """A Parquet part in a table folder that no trusted record names and that is not a compaction's leftover.

    ``identity``: the run id, table, flushes, steps and rows its own metadata states (None: unreadable);
    ``problem``: why it does not verify (None: its page checksums, identity, columns and rows all hold)."""

    path: Path
    name: str
    identity: dict | None
    problem: str | None

    @property
    def verified(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        if self.identity is None:
            return f"{self.name} (unreadable)"
        flushes, steps = self.identity.get("flushes", ["?", "?"]), self.identity.get("steps", ["?", "?"])
        return f"{self.name} (flushes {flushes[0]}-{flushes[1]}, steps {steps[0]}-{steps[1]})"


def _identity(path: Path) -> dict | None:
    try:
        identity = json.loads((pq.read_schema(path).metadata or {})[parts.KEY])
        return identity if isinstance(identity, dict) else None
    except Exception:  # noqa: BLE001 - a half-written or foreign file: there is no identity to read
        return None


def _problem(run_dir: Path, path: Path, spec: TableSpec, identity: dict | None, run_id: str, n_params: int
             ) -> str | None:
    """Why the part does not verify as this run's part of ``table``, or None (every check of a committed part,
    with the part's own metadata standing in for the missing record)."""
    if identity is None:
        return "unreadable, or not a dynamics part"
    if identity.get("run_id") != run_id:
        return f"a part of another run (run id {identity.get('run_id')})"
    try:
        data = path.read_bytes()
        entry = parts.PartEntry(f"{spec.name}/{path.name}", int(identity["rows"]),
                                (int(identity["steps"][0]), int(identity["steps"][1])), len(data), zlib.crc32(data))
        flushes = (int(identity["flushes"][0]), int(identity["flushes"][1]))
        parts.read_part(run_dir, entry, run_id=run_id, spec=spec, flushes=flushes, record="no commit record",
                        n_params=n_params)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def find(run_dir: Path, trusted: Sequence[records.Commit], run_id: str, n_params: int,
         tables: Mapping[str, TableSpec] | None = None) -> tuple[list[Orphan], list[Path]]:
    """The orphans of the run, and the files a writer may remove outright: temporary files, superseded records
    and the parts a compaction merged (this run's, of flushes the trusted records cover). ``tables``: the run's
    tables (:func:`dynamics.schema.tables_of` its meta.json; default the built-in ones)."""
    tables = tables_of(None) if tables is None else tables
    covered = trusted[-1].flushes[1] if trusted else -1
    orphans, removable = [], []
    for path in records.unreferenced(run_dir, trusted, tuple(tables)):
        table = path.parent.name
        if path.suffix != ".parquet" or table not in tables:
            removable.append(path)
            continue
        identity = _identity(path)
        if identity is not None and identity.get("run_id") == run_id and _last_flush(identity) <= covered:
            removable.append(path)  # merged into a committed part: its rows are committed there
            continue
        orphans.append(Orphan(path, f"{table}/{path.name}", identity,
                              _problem(run_dir, path, tables[table], identity, run_id, n_params)))
    return orphans, removable


def _last_flush(identity: dict) -> int:
    try:
        return int(identity["flushes"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1 << 62  # no flushes stated: never taken for a compaction's leftover


def move(run_dir: Path, orphans: Sequence[Orphan]) -> list[dict]:
    """Move each verified orphan to ``RUN/quarantine/<table>/`` (a free name: a number is added if taken);
    returns what ``meta.json["quarantined"]`` lists for them."""
    moved, now = [], _dt.datetime.now(_dt.timezone.utc).isoformat()
    for orphan in orphans:
        if not orphan.verified:
            continue
        folder = run_dir / FOLDER / orphan.path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        target, n = folder / orphan.path.name, 1
        while target.exists():
            target, n = folder / f"{orphan.path.name}.{n}", n + 1
        os.replace(orphan.path, target)
        fsync_dir(folder)
        fsync_dir(orphan.path.parent)
        identity = orphan.identity or {}
        moved.append({"file": orphan.name, "moved_to": str(target.relative_to(run_dir)), "at": now,
                      **{k: identity[k] for k in ("flushes", "steps", "rows") if k in identity},
                      "why": "verified, but no commit record names it"})
    return moved


def listed(run_dir: Path, meta: dict) -> list[dict]:
    """The quarantined parts ``meta.json`` lists, each with ``present``: whether its file is still there."""
    entries = meta.get("quarantined") or []
    if not isinstance(entries, list):
        raise RunStoreError(f"{run_dir / 'meta.json'}: 'quarantined' is not a list")
    out = []
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("moved_to"), str):
            out.append({**e, "present": (run_dir / e["moved_to"]).is_file()})
    return out
