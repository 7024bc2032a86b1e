"""Commit records: what makes a flush (or a compaction) visible, and the set of them a reader trusts.

``RUN/commits/AAAAAA-BBBBBB.json`` commits flushes A to B (one flush: A = B; a compaction of several: A < B):
the run id and, per table, the part files with their rows, step range, size and CRC-32. A record is written to
a temporary name and renamed, after its parts are durable; that rename is the commit. A record whose range lies
inside another's is superseded by it (the compaction that merged it) and ignored, so a compaction becomes
visible in one rename too. The kept records must cover flushes 0, 1, 2, ... without a gap, and per table their
step ranges must not overlap (per-step rows of one step may sit in two consecutive flushes: the step's own row,
and scalars logged after its optimizer step).
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..schema import BUILTIN_TABLES, COMMITS, TABLES, is_table_name
from .parts import PartEntry
from .rundir import RunStoreError, write_atomically

_RECORD = re.compile(r"^(\d{6,})-(\d{6,})\.json$")


@dataclass(frozen=True)
class Commit:
    """One commit record: the flushes it covers and, per table, its parts."""

    path: Path
    flushes: tuple[int, int]
    parts: Mapping[str, tuple[PartEntry, ...]]

    @property
    def name(self) -> str:
        return f"{COMMITS}/{self.path.name}"

    def steps(self, table: str) -> tuple[int, int] | None:
        entries = self.parts.get(table, ())
        return (min(e.steps[0] for e in entries), max(e.steps[1] for e in entries)) if entries else None


def record_name(flushes: tuple[int, int]) -> str:
    return f"{flushes[0]:06d}-{flushes[1]:06d}.json"


def write_commit(run_dir: Path, run_id: str, flushes: tuple[int, int],
                 parts: Mapping[str, Sequence[PartEntry]]) -> Commit:
    """Commit ``parts`` as flushes ``flushes``: one atomic rename of the record."""
    path = run_dir / COMMITS / record_name(flushes)
    record = {"run_id": run_id, "flushes": list(flushes),
              "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
              "parts": {t: [e.as_record() for e in entries] for t, entries in parts.items()}}
    text = json.dumps(record, indent=1)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Commit(path, flushes, {t: tuple(e) for t, e in parts.items()})


def _parse(path: Path, run_id: str) -> Commit:
    """One record, checked: its own name, the run's id, and well-formed part entries."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunStoreError(f"{path}: unreadable commit record ({exc})") from exc
    first, last = (int(g) for g in _RECORD.match(path.name).groups())
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        found = record.get("run_id") if isinstance(record, dict) else None
        raise RunStoreError(f"{path}: a commit record of another run (run id {found}; this run is {run_id})")
    if record.get("flushes") != [first, last]:
        raise RunStoreError(f"{path}: says flushes {record.get('flushes')}, its name {first}-{last}")
    parts: dict[str, tuple[PartEntry, ...]] = {}
    try:
        for table, entries in record["parts"].items():
            if not is_table_name(table):
                raise ValueError(f"not a table name: {table!r}")
            parts[table] = tuple(PartEntry(str(e["file"]), int(e["rows"]), (int(e["steps"][0]), int(e["steps"][1])),
                                           int(e["bytes"]), int(e["crc32"])) for e in entries)
            if any(not e.file.startswith(f"{table}/") or "/" in e.file[len(table) + 1:] for e in parts[table]):
                raise ValueError(f"a {table} file outside {table}/")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise RunStoreError(f"{path}: malformed commit record ({exc})") from None
    return Commit(path, (first, last), parts)


def read_commits(run_dir: Path, run_id: str) -> list[Commit]:
    """The records a reader trusts, in flush order (superseded ones dropped), checked for gaps and overlaps."""
    folder = run_dir / COMMITS
    try:
        names = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RunStoreError(f"{folder}: not a directory (the run's commit records)") from None
    except OSError as exc:
        raise RunStoreError(f"{folder}: unreadable ({exc.strerror or exc})") from exc
    records = [_parse(folder / n, run_id) for n in names if _RECORD.match(n)]
    records.sort(key=lambda c: (c.flushes[0], -c.flushes[1]))
    kept: list[Commit] = []
    for commit in records:
        if kept and commit.flushes[1] <= kept[-1].flushes[1]:
            continue  # inside the last kept record: superseded by a compaction
        if kept and commit.flushes[0] <= kept[-1].flushes[1]:
            raise RunStoreError(f"{commit.path}: overlaps {kept[-1].path} (flushes {commit.flushes} and "
                                f"{kept[-1].flushes})")
        expected = kept[-1].flushes[1] + 1 if kept else 0
        if commit.flushes[0] != expected:
            raise RunStoreError(f"{folder}: no commit record for flush(es) {expected}-{commit.flushes[0] - 1} "
                                f"(before {commit.path.name}): committed data is missing")
        kept.append(commit)
    _check_step_order(kept)
    return kept


def _check_step_order(commits: Sequence[Commit]) -> None:
    """Per table, each record's steps come after the previous one's (an open table, the steps: may share the
    boundary step)."""
    for table in dict.fromkeys(t for c in commits for t in c.parts):
        shares_boundary = table in BUILTIN_TABLES and BUILTIN_TABLES[table].open
        previous: Commit | None = None
        for commit in commits:
            steps = commit.steps(table)
            if steps is None:
                continue
            if previous is not None:
                end = previous.steps(table)[1]
                if steps[0] < end or (steps[0] == end and not shares_boundary):
                    raise RunStoreError(f"{commit.path}: its {table} steps {steps[0]}-{steps[1]} overlap those of "
                                        f"{previous.path} (up to {end}): the same steps committed twice")
            previous = commit


def committed_files(commits: Sequence[Commit]) -> set[str]:
    """Every file (relative to the run directory) the trusted records name."""
    return {e.file for c in commits for entries in c.parts.values() for e in entries}


def unreferenced(run_dir: Path, commits: Sequence[Commit], tables: Sequence[str] = TABLES) -> list[Path]:
    """Files a writer may remove: parts no trusted record names, superseded records, temporary files (in the
    folders of ``tables``, the run's tables, and of commits)."""
    keep = committed_files(commits) | {c.name for c in commits}
    found = []
    for folder in (*tables, COMMITS):
        directory = run_dir / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            name = f"{folder}/{path.name}"
            ours = path.suffix in (".parquet", ".tmp") or _RECORD.match(path.name)
            if name not in keep and path.is_file() and ours:
                found.append(path)
    return found


def next_step(commits: Sequence[Commit]) -> int:
    """One past the largest committed step of any table (0 when nothing is committed)."""
    ends = [s[1] for c in commits for t in c.parts if (s := c.steps(t)) is not None]
    return max(ends) + 1 if ends else 0
