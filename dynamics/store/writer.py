"""The one writer of a run directory: opens (or resumes) it under the writer lock, commits each flush as one
unit, compacts, and closes. The recorder is its only caller during training; ``dynamics compact`` uses it too.

Resuming a run first trusts only its commit records (:mod:`dynamics.store.commits`) and refuses a run whose
records are fewer than ``meta.json`` says were committed (:mod:`dynamics.store.completeness`), changing nothing
in it. Parts of a flush that a killed process did not commit are moved to ``quarantine/`` when they verify
(:mod:`dynamics.store.quarantine`) and removed when they do not, and said so (a warning, and
``meta.json["recovered"]`` and ``["quarantined"]``, with their steps), as is a stale lock taken over. The run
continues after its last committed step.
"""
from __future__ import annotations

import datetime as _dt
import json
import uuid
import warnings
from pathlib import Path
from typing import Mapping

import pandas as pd
import pyarrow.parquet as pq

from ..schema import COMMITS, LOCK_FILE, META_FILE, TABLES, tables_of
from . import commits as records
from . import compaction, completeness, parts, quarantine
from .lock import WriterLock, holder
from .rundir import RunStoreError, read_meta, write_meta

_OURS = {*TABLES, COMMITS, LOCK_FILE}


def _check_folders(run_dir: Path, tables=TABLES) -> None:
    """Each table's folder and the commits folder are directories (created when missing)."""
    for folder in (*tables, COMMITS):
        path = run_dir / folder
        if path.exists() and not path.is_dir():
            raise RunStoreError(f"{path}: exists and is not a directory (it holds the run's {folder} files)")
        path.mkdir(exist_ok=True)


def _leftover_steps(path: Path) -> str:
    """What an uncommitted part held, from its footer (for the record of what a resume discarded)."""
    try:
        identity = json.loads((pq.read_schema(path).metadata or {})[parts.KEY])
        return f"{path.parent.name}/{path.name} (steps {identity['steps'][0]}-{identity['steps'][1]})"
    except Exception:  # noqa: BLE001 - a half-written file: its name is all there is
        return f"{path.parent.name}/{path.name} (unreadable)"


class RunWriter:
    """Holds the run's lock from :func:`open_run` until :meth:`close` (or :meth:`release`)."""

    def __init__(self, run_dir: Path, lock: WriterLock, run_id: str, old_meta: dict | None,
                 trusted: list[records.Commit], recovered: list[dict], quarantined: list[dict] = ()) -> None:
        self.run_dir, self.run_id, self.old_meta = run_dir, run_id, old_meta
        self._lock, self._commits, self._recovered = lock, trusted, recovered
        self._quarantined = list(quarantined)
        self._n_params = len(old_meta["parameters"]) if old_meta else 0
        self._tables = tables_of(old_meta)

    @property
    def next_step(self) -> int:
        """One past the last committed step (where a resumed run continues when its metadata has no next_step)."""
        return records.next_step(self._commits)

    @property
    def files(self) -> int:
        """How many part files the trusted records name."""
        return len(records.committed_files(self._commits))

    def write_meta(self, meta: dict) -> None:
        """Write ``meta.json``, adding (in place) the run id, what resuming recovered and quarantined, and how
        many flushes are committed now (what a reader checks the records against)."""
        meta["run_id"] = self.run_id
        if self._recovered:
            meta["recovered"] = self._recovered
        if self._quarantined:
            meta["quarantined"] = self._quarantined
        meta["committed"] = completeness.stated(self._commits)
        self._n_params = len(meta.get("parameters") or ())
        self._tables = tables_of(meta)
        _check_folders(self.run_dir, self._tables)
        write_meta(self.run_dir, meta)

    def commit(self, frames: Mapping[str, pd.DataFrame]) -> None:
        """Write one flush: every frame as a part of its table, then the record that makes them visible. On any
        failure (a full disk, an interrupt) the parts written so far are removed and the error is raised."""
        frames = {t: f for t, f in frames.items() if len(f)}
        if not frames:
            return
        flush = self._commits[-1].flushes[1] + 1 if self._commits else 0
        entries: dict[str, list[parts.PartEntry]] = {}
        try:
            for table, frame in frames.items():
                if table not in self._tables:
                    raise RunStoreError(f"{self.run_dir}: a {table!r} part, but meta.json declares no such table")
                arrow = parts.to_arrow(self._tables[table], frame)
                entries[table] = [parts.write_part(
                    self.run_dir, f"{table}/part-{flush:06d}.parquet", [arrow], arrow.schema, run_id=self.run_id,
                    table=table, flushes=(flush, flush), steps=parts.step_range(arrow), rows=arrow.num_rows)]
            parts.fsync_tables(self.run_dir, [e.file for es in entries.values() for e in es])
            commit = records.write_commit(self.run_dir, self.run_id, (flush, flush), entries)
        except BaseException:
            for es in entries.values():
                for e in es:
                    compaction.remove(self.run_dir / e.file)
            raise
        self._commits.append(commit)

    def compact(self) -> tuple[int, int]:
        """Merge the committed parts into a few files (see :mod:`dynamics.store.compaction`); files before, after."""
        before = self.files
        self._commits = compaction.compact(self.run_dir, self._commits, run_id=self.run_id, n_params=self._n_params,
                                           tables=self._tables)
        return before, self.files

    def close(self, meta: dict) -> None:
        """Compact, write the final ``meta.json`` and release the lock (also when writing fails). A failed
        compaction loses nothing (the parts stay as committed): it is written to ``meta["errors"]``."""
        try:
            try:
                self.compact()
            except (OSError, RunStoreError) as exc:
                meta.setdefault("errors", []).append(f"compaction failed, parts kept as written: {exc}")
                warnings.warn(f"dynamics: {self.run_dir}: compaction failed, parts kept as written: {exc}",
                              RuntimeWarning, stacklevel=2)
            self.write_meta(meta)
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the lock without writing anything (attach failed after opening the run). Idempotent."""
        self._lock.release()


def open_run(out: str | Path, *, resume: bool) -> RunWriter:
    """Create a run directory, or with ``resume`` reopen one, and take its writer lock; never overwrite a run."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunStoreError(f"{run_dir}: exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        raise RunStoreError(_already_there(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = WriterLock.acquire(run_dir)
    try:
        return _opened(run_dir, lock, resume)
    except BaseException:
        lock.release()
        raise


def _already_there(run_dir: Path) -> str:
    """Why a non-empty ``out=`` is refused without ``resume=True``: what run is there (closed or not, how many
    steps committed, its lock), and what to do, which differs for a run that never committed a step."""
    head = f"{run_dir}: run directory already exists"
    try:
        meta = read_meta(run_dir)
    except RunStoreError:
        names = sorted(p.name for p in run_dir.iterdir())[:5]
        return f"{head} and is not empty (it holds {names}, no readable {META_FILE}): choose another out="
    try:
        end = records.next_step(records.read_commits(run_dir, meta["run_id"]))
    except RunStoreError as exc:
        return f"{head}: a run whose commit records cannot be read ({exc}); `dynamics check {run_dir}` says more"
    status = meta.get("status")
    what = "a closed run" if status == "closed" else f"a run that was not closed (status {status!r})"
    steps = "no step" if end == 0 else "step 0" if end == 1 else f"steps 0-{end - 1}"
    lock, live = holder(run_dir)
    there = f"{head}: {what}, with {steps} committed, {lock}"
    if live:
        return f"{there}: wait until it is closed, or choose another out="
    if end == 0 and status != "closed":
        return (f"{there}: nothing committed is lost by starting again: remove the folder or choose another out=; "
                f"resume=True continues this run from step 0")
    after = f" after step {end - 1}" if end else ""
    return (f"{there}: pass resume=True to continue it{after}, or choose another out= (or remove the folder) "
            f"for a new run")


def _opened(run_dir: Path, lock: WriterLock, resume: bool) -> RunWriter:
    has_meta = (run_dir / META_FILE).exists()
    if has_meta and not resume:  # created by another process since the check above
        raise RunStoreError(f"{run_dir}: run directory already exists and is not empty; pass resume=True")
    if not has_meta:
        strangers = sorted(p.name for p in run_dir.iterdir() if p.name not in _OURS)
        committed = (run_dir / COMMITS).is_dir() and any((run_dir / COMMITS).iterdir())
        if strangers or committed:
            raise RunStoreError(f"{run_dir / META_FILE}: not a dynamics run (no {META_FILE}; it holds "
                                f"{(strangers or [COMMITS])[:5]})")
        _check_folders(run_dir)
        return RunWriter(run_dir, lock, uuid.uuid4().hex, None, [], _stale_note(lock, []))
    old_meta = read_meta(run_dir)
    trusted = records.read_commits(run_dir, old_meta["run_id"])
    tables = tables_of(old_meta)
    _check_folders(run_dir, tables)
    missing = completeness.refusal(run_dir, old_meta, trusted)
    if missing:  # damage: nothing is moved, removed or appended
        raise RunStoreError(f"{missing}. resume=True refuses a run whose committed data is incomplete and "
                            f"changes nothing in it; restore the missing commit records, or record into another "
                            f"out=")
    orphans, removable = quarantine.find(run_dir, trusted, old_meta["run_id"], len(old_meta["parameters"]), tables)
    moved = quarantine.move(run_dir, orphans)
    discarded = [_leftover_steps(o.path) for o in orphans if not o.verified]
    for path in [*removable, *(o.path for o in orphans if not o.verified)]:
        compaction.remove(path)
    if moved:
        warnings.warn(f"dynamics: {run_dir}: moved parts that were never committed (of a flush the writing "
                      f"process did not finish) to {quarantine.FOLDER}/, listed in meta.json['quarantined']: "
                      f"{', '.join(o.describe() for o in orphans if o.verified)}", RuntimeWarning, stacklevel=3)
    if discarded:
        warnings.warn(f"dynamics: {run_dir}: removed files that were never committed and are not this run's "
                      f"verified parts (half-written, or copied in): {', '.join(discarded)}", RuntimeWarning,
                      stacklevel=3)
    recovered = [*old_meta.get("recovered", []), *_stale_note(lock, discarded, moved)]
    return RunWriter(run_dir, lock, old_meta["run_id"], old_meta, trusted, recovered,
                     [*old_meta.get("quarantined", []), *moved])


def _stale_note(lock: WriterLock, discarded: list[str], moved: list[dict] = ()) -> list[dict]:
    """What opening the run found and set right, for meta.json["recovered"] (empty when nothing)."""
    if not lock.stale and not discarded and not moved:
        return []
    note: dict = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    if lock.stale:
        note["stale_lock"] = {k: lock.stale.get(k) for k in ("pid", "host", "since")}
    if moved:
        note["quarantined_uncommitted"] = [f"{m['file']} (steps {m['steps'][0]}-{m['steps'][1]}) -> {m['moved_to']}"
                                           if "steps" in m else f"{m['file']} -> {m['moved_to']}" for m in moved]
    if discarded:
        note["discarded_uncommitted"] = discarded
    return [note]


def compact_run(run_dir: str | Path) -> tuple[int, int]:
    """``dynamics compact``: merge a closed (or crashed) run's parts; refused while a live writer has it open."""
    read_meta(run_dir)  # a run, not a folder to create
    writer = open_run(run_dir, resume=True)
    try:
        counts = writer.compact()
        writer.write_meta(writer.old_meta)
    except OSError as exc:  # a full disk, say: nothing is lost (the old records stay trusted)
        raise RunStoreError(f"{run_dir}: compaction failed, the parts are kept as they were ({exc})") from exc
    finally:
        writer.release()
    return counts
