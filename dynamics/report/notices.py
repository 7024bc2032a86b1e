"""What each run's metadata says the reader must know: notes, errors, runs never closed and steps measured at
the optimizer step only. The report lists them under "Warnings"; ``dynamics summary`` prints their count."""
from __future__ import annotations

from typing import Any

import pandas as pd

from ..schema import BEFORE_RESUME, TRAINING_RAISED

__all__ = ["run_warnings", "optimizer_step_only", "OPTIMIZER_STEP_NOTE", "warning_count_line"]

#: how the recorder's notes start when a step's gradient was taken at the optimizer step (no backward pass seen)
OPTIMIZER_STEP_NOTE = "gradient taken at the optimizer step"


def _steps(value: Any) -> list:
    """The steps a note lists (a list of steps, a count, or a bare message)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def optimizer_step_only(meta: dict) -> int:
    """How many steps the run's notes list as measured at the optimizer step only (the recorder lists up to 100
    steps per note)."""
    notes = meta.get("notes") or {}
    if not isinstance(notes, dict):
        return 0
    return sum(len(_steps(v)) for k, v in notes.items() if str(k).startswith(OPTIMIZER_STEP_NOTE))


def _note_text(text: str, value: Any) -> str:
    steps = _steps(value)
    if not steps:
        return f"note: {text}" + (f" ({value})" if value not in (None, "", {}) else "")
    shown = ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
    return f"note: {text} (at {len(steps)} step{'s' if len(steps) != 1 else ''}: {shown})"


def run_warnings(metas: dict[str, dict]) -> pd.DataFrame:
    """One row per warning: ``run``, ``kind`` (``not closed``, ``error``, ``optimizer step only``, ``note``, and
    ``error before resume`` / ``note before resume`` for what the attaches before a resume recorded) and
    ``message``, in the order of the runs."""
    rows = []
    for run, meta in metas.items():
        if meta.get("status") == "running":
            rows.append((run, "not closed", "the run was never closed (status 'running'): it may have been "
                                            "killed; steps after its last flush are missing"))
        for err in meta.get("errors") or []:
            rows.append((run, "error", str(err)))
        for earlier in meta.get(BEFORE_RESUME) or []:
            where = f"before the resume at step {earlier.get('resumed_at')}"
            rows += [(run, "error before resume", f"{where}: {err}") for err in earlier.get("errors") or []]
            rows += [(run, "note before resume", f"{where}: {_note_text(str(text), value)}")
                     for text, value in (earlier.get("notes") or {}).items()]
        n = optimizer_step_only(meta)
        if n:
            rows.append((run, "optimizer step only", f"{n} step{'s' if n != 1 else ''} measured at the optimizer "
                                                     "step only (no backward pass seen: the gradient after any "
                                                     "clipping or scaling)"))
        notes = meta.get("notes") or {}
        for text, value in (notes.items() if isinstance(notes, dict) else [(str(n), None) for n in notes]):
            if not str(text).startswith(OPTIMIZER_STEP_NOTE):
                rows.append((run, "note", _note_text(str(text), value)))
    return pd.DataFrame(rows, columns=["run", "kind", "message"])


def warning_count_line(warnings: pd.DataFrame) -> str:
    """One line for the terminal: how many warnings, of which kinds."""
    if warnings.empty:
        return "no warnings in the runs' metadata"
    kinds = warnings.groupby("kind", sort=False)["run"].agg(["size", "nunique"])
    parts = [f"{k}: {r['size']} ({r['nunique']} run{'s' if r['nunique'] != 1 else ''})" for k, r in kinds.iterrows()]
    return f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''} in the runs' metadata ({'; '.join(parts)}); " \
           "see the report's Warnings section"


#: how far a run's step count may be from its group's median, as a share of the median, before it is flagged
STEP_TOLERANCE = 0.1


def _error_reasons(meta: dict) -> list[str]:
    """Why a run's errors flag it: the recorder's own errors, in this attach or one before a resume (the steps
    they touched may be wrong or missing), and the training loop's exception when the run was not resumed after
    it (the run stopped there). An exception that a resume followed does not flag the run."""
    own = [str(e) for e in meta.get("errors") or []]
    raised = [e for e in own if e.startswith(TRAINING_RAISED)]
    recorder = [e for e in own if not e.startswith(TRAINING_RAISED)]
    recorder_before = [str(e) for b in meta.get(BEFORE_RESUME) or [] for e in b.get("errors") or []
                       if not str(e).startswith(TRAINING_RAISED)]
    plural = lambda n: "s" if n != 1 else ""
    out = [f"{len(recorder)} recorder error{plural(len(recorder))}"] if recorder else []
    if recorder_before:
        out.append(f"{len(recorder_before)} recorder error{plural(len(recorder_before))} before a resume")
    out += [f"its training stopped ({e})" for e in raised]
    return out


def flagged_runs(metas: dict[str, dict], steps: dict[str, int], group_of: dict[str, str]) -> pd.DataFrame:
    """The runs a report keeps out of its statistics, one row each: ``run``, ``reason`` and ``always`` (true for
    runs that cannot count even with ``--include-flagged``: a run that recorded no step, a copy of another run).

    Flagged, in the order of ``metas``: a run that recorded no step (``steps`` has none for it); a copy (the
    ``run_id`` of a run listed before it: the same run in two folders would count as a second seed); a run never
    closed (status ``running``); a run with recorder errors (before a resume too) or whose training raised and
    was not resumed (:func:`_error_reasons`); a run whose recorded steps differ from its group's
    median (``group_of``; copies and empty runs left out; the upper median, so that of two runs only the shorter
    is flagged) by more than :data:`STEP_TOLERANCE` of it."""
    seen: dict[str, str] = {}
    reasons: dict[str, list[str]] = {}
    always: set[str] = set()
    for run, meta in metas.items():
        why = reasons.setdefault(run, [])
        rid = meta.get("run_id")
        if rid and rid in seen:
            why.append(f"a copy of run {seen[rid]} (the same run_id {rid} in the folders {seen[rid]} and {run}): "
                       "counted once")
            always.add(run)
        elif rid:
            seen[rid] = run
        if not steps.get(run):
            why.append("recorded no step" + (" (status 'running': it stopped before its first flush)"
                                             if meta.get("status") == "running" else ""))
            always.add(run)
            continue
        if meta.get("status") == "running":
            why.append("never closed (status 'running')")
        why += _error_reasons(meta)
    counted = {r: n for r, n in steps.items() if r in metas and r not in always and n}
    by_group: dict[str, list[int]] = {}
    for run, n in counted.items():
        by_group.setdefault(group_of.get(run, run), []).append(n)
    for run, n in counted.items():
        group = group_of.get(run, run)
        median = float(sorted(by_group[group])[len(by_group[group]) // 2])  # the upper median: of two, the longer
        if abs(n - median) > STEP_TOLERANCE * median:
            reasons[run].append(f"{n} recorded steps against a median of {median:g} in {group} "
                                f"(more than a tenth apart)")
    rows = [(run, "; ".join(why), run in always) for run, why in reasons.items() if why]
    return pd.DataFrame(rows, columns=["run", "reason", "always"])


def exclusion_warnings(flagged: pd.DataFrame, include: bool) -> pd.DataFrame:
    """One Warnings row per flagged run: excluded from the statistics, or kept (``--include-flagged``)."""
    rows = []
    for r in flagged.itertuples(index=False):
        if r.always or not include:
            rows.append((r.run, "excluded", f"left out of every statistic: {r.reason}"
                         + ("" if r.always else " (--include-flagged keeps it)")))
        else:
            rows.append((r.run, "flagged, kept", f"kept in the statistics (--include-flagged): {r.reason}"))
    return pd.DataFrame(rows, columns=["run", "kind", "message"])
