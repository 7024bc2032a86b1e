"""The run a recorder writes: opening (or resuming) its directory at attach, and committing each flush to it
as one unit (see :mod:`dynamics.store.writer`).

Only the writing process (rank 0) touches the directory; the others keep an :class:`OpenRun` without one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from .. import store
from ..schema import BEFORE_RESUME, COMMITS, META_FILE, STEPS, tables_of
from . import description, frames
from .logs import NOT_RECORDED
from .measurements import StepMeasurements
from .options import RecordingOptions, RunSpec
from .quantity import Flushed, Quantity, StepRow
from .views import ViewAssignment


@dataclass
class OpenRun:
    """A run directory open for writing through its store writer (``writer`` None on a process that does not
    write), its metadata, the step the recording starts at and the parts of the flush being written."""

    writer: store.RunWriter | None = None
    meta: dict = field(default_factory=dict)
    start_step: int = 0
    previous_meta: dict | None = None  # resuming: the metadata before this attach (put back if attach fails)
    created: bool = False              # the directory did not exist before this attach
    pending: dict[str, pd.DataFrame] = field(default_factory=dict)
    unwritten: list[dict[str, pd.DataFrame]] = field(default_factory=list)  # flushes whose commit failed

    @property
    def run_dir(self) -> Path | None:
        return None if self.writer is None else self.writer.run_dir

    def write(self, table: str, frame: pd.DataFrame) -> None:
        """Add ``frame`` to the flush being written as its ``table`` part (nothing on a process that does not
        write); :meth:`commit` makes the flush's parts visible together."""
        if self.writer is not None:
            self.pending[table] = frame

    def commit(self) -> None:
        """Commit the flush being written: every part of it becomes visible, or (on an error: a full disk, an
        interrupt) none, and the flush is kept for :meth:`retry` at close."""
        parts, self.pending = self.pending, {}
        if self.writer is not None and parts:
            try:
                self.writer.commit(parts)
            except BaseException:
                self.unwritten.append(parts)
                raise

    def retry(self) -> None:
        """Commit the flushes that failed to, in order (at close: the disk may have room again). One that fails
        again raises an error naming its steps, which are then lost."""
        while self.unwritten:
            parts = self.unwritten.pop(0)
            try:
                self.writer.commit(parts)
            except Exception as exc:
                steps = [int(s) for frame in parts.values() for s in (frame["step"].min(), frame["step"].max())]
                raise OSError(f"steps {min(steps)}-{max(steps)} could not be written ({exc})") from exc

    def write_meta(self) -> None:
        if self.writer is not None:
            self.writer.write_meta(self.meta)

    def close(self) -> None:
        """Compact the parts, write the final metadata and release the run's lock."""
        if self.writer is not None:
            self.writer.close(self.meta)

    def discard(self) -> None:
        """Undo the opening after a failed attach, so that a retry with the same ``out=`` works: a new run
        leaves no directory behind (a directory that was there and empty stays, empty), a resumed run gets its
        old metadata back; the lock is released. Nothing else was written yet (parts are written at flushes)."""
        if self.writer is None:
            return
        run_dir = self.writer.run_dir
        try:
            if self.previous_meta is not None:
                store.write_meta(run_dir, self.previous_meta)
                return
            (run_dir / META_FILE).unlink(missing_ok=True)
        finally:
            self.writer.release()
        tables = tables_of(self.meta)
        for folder in [*(run_dir / table for table in (*tables, COMMITS)), *([run_dir] if self.created else [])]:
            with contextlib.suppress(OSError):  # only empty folders go
                folder.rmdir()


def before_resume(old_meta: dict, resumed_at: int) -> list[dict]:
    """What the attaches before this resume said: the earlier ones' record, and the last one's errors and notes
    (with its status and the step the run resumes at) when it had any, so that a resume loses none of them."""
    earlier = list(old_meta.get(BEFORE_RESUME) or [])
    errors, notes = list(old_meta.get("errors") or []), old_meta.get("notes") or {}
    if errors or notes:
        earlier.append({"resumed_at": resumed_at, "status": old_meta.get("status"), "errors": errors, "notes": notes})
    return earlier


def open_run(spec: RunSpec, options: RecordingOptions, model: nn.Module, optimizer: torch.optim.Optimizer,
             assignment: ViewAssignment, parameters: list[dict], wrappers: Sequence[str] = ()) -> OpenRun:
    """Create (or reopen, to resume) the run directory under its writer lock and write its metadata; the run
    knows its first step. If this fails after the directory was prepared, it is put back as it was."""
    created = not Path(spec.out).exists()
    writer = store.open_run(spec.out, resume=spec.resume)
    old_meta = writer.old_meta
    run = OpenRun(writer, {}, 0, old_meta, created)
    try:
        if old_meta is not None and [p["name"] for p in old_meta["parameters"]] != [p["name"] for p in parameters]:
            raise store.RunStoreError(f"{writer.run_dir}: cannot resume: the model's recorded parameters differ "
                                      f"from the run's")
        run.meta = description.describe_run(model, optimizer, assignment, parameters, options, spec,
                                            created=(old_meta or {}).get("created"), wrappers=wrappers)
        if old_meta is not None:  # after a crash meta.json has no next_step: continue after the last commit
            run.start_step = int(old_meta.get("next_step") or writer.next_step)
            run.meta["resumed_at"] = [*old_meta.get("resumed_at", []), run.start_step]
            earlier = before_resume(old_meta, run.start_step)
            if earlier:
                run.meta[BEFORE_RESUME] = earlier
        run.write_meta()
    except BaseException:
        run.discard()
        raise
    return run


def flush(run: OpenRun, rows: Sequence[StepRow], measurements: StepMeasurements, parts: Sequence[Quantity],
          logs: dict[int, dict[str, float]]) -> None:
    """Bring the buffered rows and logs to the host (one transfer per buffer) and append every quantity's
    frames as parts of one flush; the per-step columns of all of them (and the logs) make the steps part."""
    columns: dict[int, dict] = {int(r.index): {"step": r.index} for r in rows}
    if rows:
        flushed = Flushed.of(rows, measurements.buffer.take(len(rows)))
        for quantity in (measurements, *parts):
            taken = quantity.take(flushed)
            for table, frame in taken.tables.items():
                run.write(table, frame)
            for step, extra in taken.step_columns.items():
                columns[step].update(extra)
    for step, values in logs.items():
        columns.setdefault(step, {"step": step, **NOT_RECORDED}).update(values)
    if columns:
        run.write(STEPS, frames.step_frame(list(columns.values())))
    run.commit()
