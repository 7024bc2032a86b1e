"""Whether the trusted commit records are all the run committed: ``meta.json`` against the records.

Each time the writer writes ``meta.json`` it states how many flushes were committed by then
(``meta["committed"]``: ``flushes``, ``next_step``); records can only be added after that, so fewer records
than it states means records were lost, and the rows they committed would load as a shorter run. A run
written before that field existed is checked by its ``next_step``: a run closed without errors that recorded
every step must have committed every step before it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..schema import tables_of
from . import commits as records


def stated(trusted: Sequence[records.Commit]) -> dict:
    """What ``meta.json["committed"]`` says of these records."""
    return {"flushes": trusted[-1].flushes[1] + 1 if trusted else 0, "next_step": records.next_step(trusted)}


def _steps(first: int, last: int) -> str:
    return f"step {first}" if first == last else f"steps {first}-{last}"


def shortfall(run_dir: Path, meta: dict, trusted: Sequence[records.Commit]) -> str | None:
    """What is missing from the committed records, in a sentence naming the run, or None when nothing is."""
    have = stated(trusted)
    said = meta.get("committed")
    if isinstance(said, dict) and isinstance(said.get("flushes"), int) and isinstance(said.get("next_step"), int):
        if have["flushes"] >= said["flushes"]:
            return None
        gone = f" ({_steps(have['next_step'], said['next_step'] - 1)})" if said["next_step"] > have["next_step"] else ""
        held = f"steps up to {have['next_step'] - 1}" if have["next_step"] else "no step"
        return (f"{run_dir}: committed data is missing: meta.json says {said['flushes']} flush(es) were committed "
                f"(steps up to {said['next_step'] - 1}), the commit records cover {have['flushes']} ({held}): the "
                f"records of flush(es) {have['flushes']}-{said['flushes'] - 1}{gone} are gone")
    end = meta.get("next_step")
    if (meta.get("status") == "closed" and str(meta.get("schedule")) == "1" and not meta.get("errors")
            and isinstance(end, int) and not isinstance(end, bool) and have["next_step"] < end):
        held = f"end at step {have['next_step'] - 1}" if have["next_step"] else "hold no step"
        return (f"{run_dir}: committed data is missing: meta.json says the run closed at step {end} recording every "
                f"step, the commit records {held}: {_steps(have['next_step'], end - 1)} are gone")
    return None


def refusal(run_dir: Path, meta: dict, trusted: Sequence[records.Commit]) -> str | None:
    """:func:`shortfall` with the uncommitted parts that verify and may hold what is missing, or None."""
    problem = shortfall(run_dir, meta, trusted)
    if problem is None:
        return None
    from . import quarantine  # only on this error path: it reads the footers of the uncommitted parts

    orphans, _ = quarantine.find(run_dir, trusted, meta["run_id"], len(meta["parameters"]), tables_of(meta))
    kept = [o.describe() for o in orphans if o.verified]
    where = (f"; parts that verify but no record commits are still in the run: {', '.join(kept[:6])}"
             + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")) if kept else ""
    return f"{problem}{where} (`dynamics check {run_dir}` says what is there)"
