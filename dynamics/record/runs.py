"""The run a recorder writes: opening (or resuming) its directory at attach, and appending each flush to it.

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
from ..schema import META_FILE, TABLES
from ..store import frames
from . import description
from .logs import NOT_RECORDED, ScalarLog
from .measurements import StepMeasurements
from .options import RecordingOptions, RunSpec
from .parts import Flushed, StepPart, StepRow
from .views import ViewAssignment


@dataclass
class OpenRun:
    """A run directory open for writing (``run_dir`` None on a process that does not write), its metadata,
    the next part number of each table and the step the recording starts at."""

    run_dir: Path | None = None
    meta: dict = field(default_factory=dict)
    next_part: dict[str, int] = field(default_factory=dict)
    start_step: int = 0
    previous_meta: dict | None = None  # resuming: the metadata before this attach (put back if attach fails)
    created: bool = False              # the directory did not exist before this attach

    def write(self, table: str, frame: pd.DataFrame) -> None:
        """Append ``frame`` to ``table`` as its next part (nothing on a process that does not write)."""
        if self.run_dir is None:
            return
        store.write_part(self.run_dir, table, self.next_part[table], frame)
        self.next_part[table] += 1

    def write_meta(self) -> None:
        if self.run_dir is not None:
            store.write_meta(self.run_dir, self.meta)

    def discard(self) -> None:
        """Undo the opening after a failed attach, so that a retry with the same ``out=`` works: a new run
        leaves no directory behind (a directory that was there and empty stays, empty), a resumed run gets its
        old metadata back. Nothing else was written yet (parts are written at flushes only)."""
        if self.run_dir is None:
            return
        if self.previous_meta is not None:
            store.write_meta(self.run_dir, self.previous_meta)
            return
        (self.run_dir / META_FILE).unlink(missing_ok=True)
        for folder in [*(self.run_dir / table for table in TABLES), *([self.run_dir] if self.created else [])]:
            with contextlib.suppress(OSError):  # only empty folders go
                folder.rmdir()


def open_run(spec: RunSpec, options: RecordingOptions, model: nn.Module, optimizer: torch.optim.Optimizer,
             assignment: ViewAssignment, parameters: list[dict], wrappers: Sequence[str] = ()) -> OpenRun:
    """Create (or reopen, to resume) the run directory and write its metadata; the run knows its first step.
    If this fails after the directory was prepared, it is put back as it was."""
    created = not Path(spec.out).exists()
    run_dir, old_meta, next_part = store.prepare_run_dir(spec.out, resume=spec.resume)
    run = OpenRun(run_dir, {}, next_part, 0, old_meta, created)
    try:
        if old_meta is not None and [p["name"] for p in old_meta["parameters"]] != [p["name"] for p in parameters]:
            raise store.RunStoreError(f"{run_dir}: cannot resume: the model's recorded parameters differ from "
                                      f"the run's")
        run.meta = description.describe_run(model, optimizer, assignment, parameters, options, spec,
                                            created=(old_meta or {}).get("created"), wrappers=wrappers)
        if old_meta is not None:
            run.start_step = int(old_meta.get("next_step") or _next_step_on_disk(run_dir))
            run.meta["resumed_at"] = [*old_meta.get("resumed_at", []), run.start_step]
        run.write_meta()
    except BaseException:
        run.discard()
        raise
    return run


def _next_step_on_disk(run_dir: Path) -> int:
    """After a crash meta.json has no next_step: continue after the last step on disk."""
    last = store.last_step(run_dir)
    return 0 if last is None else last + 1


def flush(run: OpenRun, rows: Sequence[StepRow], measurements: StepMeasurements, parts: Sequence[StepPart],
          logs: ScalarLog) -> None:
    """Bring the buffered rows and logs to the host (one transfer per buffer) and append them as parts."""
    columns: dict[int, dict] = {}
    if rows:
        flushed = Flushed.of(rows, measurements.buffer.take(len(rows)))
        run.write("params", frames.param_frame(flushed.steps, flushed.values, flushed.has_grad, flushed.skipped,
                                               flushed.measured))
        columns = measurements.step_columns(rows, flushed.values)
        for part in parts:
            taken = part.take(flushed)
            for table, frame in taken.tables.items():
                run.write(table, frame)
            for step, extra in taken.step_columns.items():
                columns[step].update(extra)
    for step, values in logs.take().items():
        columns.setdefault(step, {"step": step, **NOT_RECORDED}).update(values)
    if columns:
        run.write("steps", frames.step_frame(list(columns.values())))
