"""``dynamics check``: what a run directory holds and whether it is whole, as a reader can tell.

Per run: the committed steps and flushes, the steps its rows flag (skipped by the optimizer, without any
gradient, non-finite), the parts in quarantine, the parts no record commits, ``meta.json``'s notes and errors,
and the damage found. A run is damaged when it cannot be loaded (any check of :func:`dynamics.store.load`,
fewer commit records than ``meta.json`` says were committed included) or when a closed run still holds a part
that verifies but that no record commits (a lost record). A crashed run is not damaged: its uncommitted
parts are what ``resume=True`` quarantines.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..schema import BEFORE_RESUME, tables_of
from . import commits as records
from . import completeness, loading, quarantine
from .rundir import RunStoreError, read_meta


@dataclass
class RunCheck:
    """What :func:`check_run` found in one run directory."""

    run_dir: Path
    status: str | None = None
    steps: list[int] = field(default_factory=list)        # committed steps (recorded or logged)
    recorded: int = 0
    flushes: int = 0
    records_end: int | None = None                        # one past the last step the records name
    loaded: bool = False                                  # the rows were read (every check of loading passed)
    flagged: dict[str, list[int]] = field(default_factory=dict)
    quarantined: list[dict] = field(default_factory=list)
    uncommitted: list[quarantine.Orphan] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    def lines(self) -> list[str]:
        """The report of this run: a headline, then one indented line per kind of finding."""
        state = self.status or "no meta.json"
        if self.status not in (None, "closed"):
            state = f"{self.status}, not closed"
        out = [f"{self.run_dir}: {'DAMAGED' if self.damaged else 'whole'} ({state})"]
        if self.steps:
            out.append(f"  committed: steps {self.steps[0]}-{self.steps[-1]} ({len(self.steps)} steps, "
                       f"{self.recorded} recorded; {self.flushes} flushes)")
        elif self.records_end:
            out.append(f"  committed: not loaded; the records name steps up to {self.records_end - 1} "
                       f"({self.flushes} flushes)")
        else:
            out.append(f"  committed: no step ({self.flushes} flushes)")
        flags = [f"{kind} {_steps(steps)}" for kind, steps in self.flagged.items() if steps]
        out.append(f"  flagged: {'; '.join(flags) if flags else 'none' if self.loaded else 'not loaded'}")
        quarantined = [f"{q['moved_to']}" + (f" (steps {q['steps'][0]}-{q['steps'][1]})" if "steps" in q else "")
                       + ("" if q["present"] else ", its file is gone") for q in self.quarantined]
        out.append(f"  quarantined: {', '.join(quarantined) if quarantined else 'none'}")
        if self.uncommitted:
            out.append("  uncommitted: " + "; ".join(
                f"{o.describe()}, {'verified' if o.verified else 'does not verify: ' + o.problem}"
                for o in self.uncommitted))
        notes = [f"{text!r} ({_steps(steps) if isinstance(steps, list) and steps else 'no step'})"
                 for text, steps in self.notes.items()]
        out.append(f"  notes: {'; '.join(notes) if notes else 'none'}")
        out.append(f"  errors: {'; '.join(self.errors) if self.errors else 'none'}")
        out += [f"  damage: {d}" for d in self.damage]
        return out


def _steps(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:10]) + (f" and {len(steps) - 10} more" if len(steps) > 10 else "")
    return f"step {shown}" if len(steps) == 1 else f"steps {shown}"


def check_run(run_dir: str | os.PathLike) -> RunCheck:
    """Check one run directory (never raises for what is wrong with it: that is its ``damage``)."""
    result = RunCheck(Path(run_dir))
    run_dir = result.run_dir
    try:
        meta = read_meta(run_dir)
    except (RunStoreError, OSError) as exc:
        result.damage.append(str(exc))
        return result
    result.status = meta.get("status")
    result.notes = meta.get("notes") if isinstance(meta.get("notes"), dict) else {}
    result.errors = [str(e) for e in meta.get("errors") or []]
    result.errors += [f"before the resume at step {b.get('resumed_at')}: {e}"
                      for b in meta.get(BEFORE_RESUME) or [] for e in b.get("errors") or []]
    try:
        result.quarantined = quarantine.listed(run_dir, meta)
        trusted = records.read_commits(run_dir, meta["run_id"])
        stated = completeness.stated(trusted)
        result.flushes, result.records_end = stated["flushes"], stated["next_step"]
        result.uncommitted, _ = quarantine.find(run_dir, trusted, meta["run_id"], len(meta["parameters"]), tables_of(meta))
        missing = completeness.shortfall(run_dir, meta, trusted)
        if missing:  # loading refuses it: say so, without reading the parts
            result.damage.append(missing)
            return result
        lost = [o.describe() for o in result.uncommitted if o.verified]
        if result.status == "closed" and lost:
            result.damage.append(f"{run_dir}: a closed run holds parts that verify but no commit record commits "
                                 f"(a lost record): {', '.join(lost)}")
        _read(result)
    except (RunStoreError, OSError) as exc:
        result.damage.append(str(exc))
    return result


def _read(result: RunCheck) -> None:
    """The committed steps and the flagged ones, through every check of loading (an error is damage)."""
    rows = loading.read_rows(result.run_dir, split_shared=False)
    per_step, columns = rows.per_step, rows.columns
    result.steps = per_step["step"].astype(int).tolist()
    result.recorded = int(per_step["recorded"].sum())
    skipped = set(per_step.loc[per_step["skipped"].astype(bool), "step"].astype(int))
    step = columns["step"]
    nonfinite = set(np.unique(step[~columns["finite"]]).astype(int))
    with_grad = set(np.unique(step[columns["has_grad"]]).astype(int))
    gradless = set(np.unique(step).astype(int)) - with_grad - skipped
    result.loaded = True
    result.flagged = {"skipped": sorted(skipped), "without any gradient": sorted(gradless),
                      "non-finite": sorted(nonfinite - skipped)}
