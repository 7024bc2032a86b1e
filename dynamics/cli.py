"""Command line: ``dynamics report RUNS... --out DIR`` and ``dynamics summary RUNS...``.

Also reachable as ``python -m dynamics``. Errors in the input (not a run directory, unknown view,
unknown grouping field) end with a one-line message and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamics", description="Per-view training dynamics: reports and summaries.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("runs", nargs="+", help="run directories (globs allowed)")
    common.add_argument("--by", default="condition",
                        help="group runs by this metadata field (meta.json, then its config); 'run' = no grouping "
                             "(default: condition)")
    common.add_argument("--views", nargs="+", metavar="VIEW",
                        help="the views to compare, every pair of them (default: every view besides the shared "
                             "group that all runs recorded)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep = sub.add_parser("report", parents=[common], help="write report.html, report.md and figures")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--title", default="dynamics imbalance report")
    rep.add_argument("--baseline", default=None,
                     help="the reference condition every other is compared with (default: the first given)")
    summ = sub.add_parser("summary", parents=[common], help="print the key imbalance table")
    summ.add_argument("--phase", default="all", help="early, middle, late or all (default: all); 'every' = all rows")
    summ.add_argument("--csv", action="store_true", help="print unformatted CSV instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dynamics import report as rep  # heavy imports only after argument parsing
    from dynamics.store import RunStoreError, expand_runs

    by = None if args.by == "run" else args.by
    try:
        runs = expand_runs(args.runs)
        if args.command == "report":
            paths = rep.report(runs, args.out, by=by, views=args.views, progress=not args.no_progress,
                               title=args.title, baseline=args.baseline)
            print(f"wrote {paths['html']} and {paths['md']}")
            return 0
        data = rep.load_report_data(runs, progress=not args.no_progress)
        nums = rep.ReportNumbers(data, by=by, views=args.views)
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
    except (ValueError, RunStoreError, FileNotFoundError) as exc:
        print(f"dynamics: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
