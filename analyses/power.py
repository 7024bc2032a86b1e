"""Seeds per task from a pilot's spread: the smallest n whose minimum detectable test-AUC difference at the
Holm level is at most the target.

    python -m analyses.power figures/mfeat/results.csv [more results.csv ...] --target 0.02

For a paired t-test over n seeds (each condition against ``separate``, paired by seed), with sd the spread of
the per-seed differences, the MDD at level α and power 1 − β is

    MDD(n) = (t_{1−α/2, n−1} + t_{1−β, n−1}) · sd / √n,

and α is the Holm level of the first step, 0.05 / m, the strictest level any test is held to. m is the size of
the Holm family the findings test in: the pilot's report family (every test of its report.md, counted from
the ``comparisons.csv`` and ``summary.csv`` beside its ``results.csv``), or, without a report, the task's
test-AUC comparisons alone. The sd is the largest over the task's conditions (every comparison must reach the
target). A pilot's sd is itself uncertain (from few seeds): the planning value is reported beside n.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analyses.conditions import ALPHA, ENSEMBLE, MDD_TARGET as TARGET, POWER, REFERENCE, SINGLE_PREFIX


def mdd(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The paired-t MDD above (NaN below 2 seeds)."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def seeds_needed(sd: float, alpha: float, target: float = TARGET, power: float = POWER, n_max: int = 1000) -> int:
    """The smallest n >= 3 with :func:`mdd` at most ``target``."""
    for n in range(3, n_max + 1):
        if mdd(sd, n, alpha, power) <= target:
            return n
    raise ValueError(f"sd {sd:.4f} needs more than {n_max} seeds for an MDD of {target} at α {alpha:.4g}")


def pilot_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per joint condition: n seeds and the sd of its per-seed test-AUC difference from ``separate``."""
    t = table[~table["condition"].astype(str).str.startswith(SINGLE_PREFIX) & (table["condition"] != ENSEMBLE)]
    wide = t.pivot_table(index="seed", columns="condition", values="test_auc")
    if REFERENCE not in wide:
        raise ValueError(f"the pilot has no {REFERENCE!r} runs to pair with")
    rows = []
    for c in wide.columns:
        if c == REFERENCE:
            continue
        d = (wide[c] - wide[REFERENCE]).dropna()
        rows.append({"condition": c, "n": int(d.size), "sd_diff": float(d.std(ddof=1)) if d.size > 1 else math.nan})
    return pd.DataFrame(rows)


def report_family_size(folder: Path) -> int | None:
    """How many tests the report in ``folder`` Holm-adjusts together (the finite p of its comparisons.csv and
    summary.csv), or None when it has no comparisons.csv. A report of two-seed runs tests nothing (values only):
    its family then counts 0 and :func:`plan` falls back to the test-AUC comparisons."""
    comparisons = folder / "comparisons.csv"
    if not comparisons.is_file():
        return None
    summary = folder / "summary.csv"
    tables = [pd.read_csv(comparisons)] + ([pd.read_csv(summary)] if summary.is_file() else [])
    return int(sum(np.isfinite(pd.to_numeric(t["p"], errors="coerce")).sum() for t in tables if "p" in t))


def plan(table: pd.DataFrame, target: float = TARGET, family: int | None = None) -> dict:
    """Seeds for one task: the pilot's largest sd of a difference, the Holm level (``family`` tests; default the
    test-AUC comparisons alone), n and the MDD it gives."""
    spread = pilot_spread(table)
    m = max(family or len(spread), 1)
    alpha = ALPHA / m
    sd = float(spread["sd_diff"].max())
    n = seeds_needed(sd, alpha, target)
    return {"comparisons": len(spread), "family": m, "alpha_holm": alpha, "pilot_seeds": int(spread["n"].min()),
            "sd_diff_max": sd, "worst": str(spread.loc[spread["sd_diff"].idxmax(), "condition"]), "seeds": n,
            "mdd_at_n": mdd(sd, n, alpha), "spread": spread.to_dict(orient="records")}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.csv of pilots (one per task)")
    p.add_argument("--target", type=float, default=TARGET)
    a = p.parse_args(argv)
    out = {}
    for path in a.results:
        folder = Path(path).parent
        r = out[str(folder)] = plan(pd.read_csv(path), a.target, report_family_size(folder))
        print(f"{path}: {r['comparisons']} test-AUC comparisons in a Holm family of {r['family']}, first-step α "
              f"{r['alpha_holm']:.5f}; pilot {r['pilot_seeds']} seeds, "
              f"largest sd of a difference {r['sd_diff_max']:.4f} ({r['worst']}) → {r['seeds']} seeds "
              f"(MDD {r['mdd_at_n']:.4f})")
    print(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
