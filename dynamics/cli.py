"""Command line: ``dynamics report RUNS... --out DIR``, ``dynamics summary RUNS...``,
``dynamics export RUNS... --tensorboard DIR``, ``dynamics compact RUNS...`` and ``dynamics check RUNS...``.

Also reachable as ``python -m dynamics``. Errors in the input (not a run directory, unknown view,
unknown grouping field, a damaged part) and every OSError (an unreadable folder, a full disk) end with a
one-line message naming the path and exit status 2, not a traceback. ``check`` reports every run given and exits
1 when any of them is damaged.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]

_EXAMPLES = """examples:
  dynamics report runs/* --out report/ --by condition   report.html, report.md and figures/
  dynamics summary runs/* --phase late                  the key imbalance table, late in training
  dynamics summary runs/base-s1 --phase every --csv     every phase, as CSV
  dynamics export runs/* --tensorboard tb/              scalars for TensorBoard (tensorboard --logdir tb/)
  dynamics compact runs/*                               merge each run's parts into a few files
  dynamics check runs/*                                 committed and flagged steps, quarantine, damage
"""


def _version() -> str:
    from dynamics import __version__
    return f"dynamics {__version__}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamics", epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Per-view training dynamics: reports, summaries and exports of "
                                                 "run directories written by dynamics.attach.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    common.add_argument("--by", default="condition",
                        help="group runs by this metadata field (meta.json, then its config); 'run' = no grouping "
                             "(default: condition)")
    common.add_argument("--views", nargs="+", metavar="VIEW",
                        help="the views to compare, every pair of them (default: every view besides the shared "
                             "group that all runs recorded)")
    common.add_argument("--include-flagged", action="store_true",
                        help="keep flagged runs (never closed, recorder errors, a step count a tenth away from their "
                             "group's median) in the statistics; by default they are listed in Warnings and left out")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep = sub.add_parser("report", parents=[common], help="write report.html, report.md and figures")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--title", default="dynamics imbalance report")
    rep.add_argument("--baseline", default=None,
                     help="the reference condition every other is compared with (default: the one called "
                          "'separate' or 'baseline'; with several conditions and neither, the report is refused "
                          "with the list)")
    rep.add_argument("--metrics", nargs="+", metavar="METRIC",
                     help="the outcome metrics compared between conditions (default: the scalars logged once, at "
                          "the end of every run, e.g. test_auc; training scalars such as loss are described only)")

    summ = sub.add_parser("summary", parents=[common], help="print the key imbalance table")
    summ.add_argument("--phase", default="all", help="early, middle, late or all (default: all); 'every' = all rows")
    summ.add_argument("--csv", action="store_true", help="print unformatted CSV instead of a table")
    export = sub.add_parser("export", help="write the runs' scalars for TensorBoard (needs dynamics[tensorboard])")
    export.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    export.add_argument("--tensorboard", required=True, metavar="DIR",
                        help="write one TensorBoard run per run directory under DIR")
    export.add_argument("--overwrite", action="store_true", help="replace event files of an earlier export")
    comp = sub.add_parser("compact", help="merge a run's committed parts into a few files (atomically)")
    comp.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    check = sub.add_parser("check", help="say per run what is committed, flagged, quarantined or damaged "
                                         "(exit status 1 when any run is damaged)")
    check.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    return parser


def _export(args: argparse.Namespace) -> int:
    from dynamics.integrations.tensorboard import export_tensorboard

    for path in export_tensorboard(args.runs, args.tensorboard, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0


def _compact(runs) -> int:
    from dynamics.store import compact_run

    for run in runs:
        before, after = compact_run(run)
        print(f"{run}: {before} part files -> {after}")
    return 0


def _check(runs) -> int:
    from dynamics.store.check import check_run

    results = [check_run(run) for run in runs]
    for result in results:
        print("\n".join(result.lines()))
    damaged = [r for r in results if r.damaged]
    print(f"{len(results) - len(damaged)} of {len(results)} run(s) whole" +
          (f"; damaged: {', '.join(str(r.run_dir) for r in damaged)}" if damaged else ""))
    return 1 if damaged else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dynamics.store import RunStoreError, expand_runs

    try:
        if args.command == "export":
            return _export(args)
        runs = expand_runs(args.runs)
        if args.command == "compact":
            return _compact(runs)
        if args.command == "check":
            return _check(runs)
        from dynamics import report as rep  # heavy imports only after argument parsing

        by = None if args.by == "run" else args.by
        if args.command == "report":
            paths = rep.report(runs, args.out, by=by, views=args.views, progress=not args.no_progress,
                               title=args.title, baseline=args.baseline, metrics=args.metrics,
                               include_flagged=args.include_flagged)
            print(f"wrote {paths['html']} and {paths['md']}")
            return 0
        data = rep.load_report_data(runs, progress=not args.no_progress)
        nums = rep.ReportNumbers(data, by=by, views=args.views, include_flagged=args.include_flagged)
        summary = nums.summary
        if args.phase != "every":
            phases = set(summary["phase"].astype(str))
            if args.phase not in phases:
                raise ValueError(f"--phase {args.phase!r}: phases are {sorted(phases)} (or 'every')")
            summary = summary[summary["phase"].astype(str) == args.phase]
        if args.csv:
            summary.to_csv(sys.stdout, index=False)
        else:
            import pandas as pd

            with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 60):
                print(rep.format_summary(summary).to_string(index=False))
        from dynamics.report.notices import warning_count_line
        print(warning_count_line(nums.warnings), file=sys.stderr if args.csv else sys.stdout)
        return 0
    except (ValueError, RunStoreError, OSError, ImportError) as exc:
        print(f"dynamics: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: Exception) -> str:
    """The error on one line, naming the path an OSError is about."""
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in str(exc):
        text = f"{exc.filename}: {exc}"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    else:
        text = str(exc)
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
