"""What one data set's grid found, as numbers (``findings.json``) and words (``findings.md``).

Everything is at the level of the run (one seed of one condition): per-run values first, then Student-t
intervals over runs, differences against the reference condition (``separate``) paired by seed, Holm-corrected
across the primary comparisons, each with its minimum detectable difference (α = 0.05, 80% power, observed
spread and n), so that a null can be told from an underpowered one.

- Primary endpoint: test ROC AUC of each joint condition minus ``separate``.
- Secondary: the greedy gap (``ensemble`` − the condition, paired by seed), the weaker view's conditional
  utilization, a linear probe of each column, and the dominant view's share of the loss reduction (from the
  report's ``shares.csv``).
- Checks before the grid: each single-view model's test AUC and the ensemble's gain over the best single view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from dynamics.analysis.comparisons import compare_conditions
from dynamics.analysis.inference import INTERVAL, difference, t_interval
from dynamics.analysis.metrics import roc_auc

from analyses.conditions import ENSEMBLE, REFERENCE, SINGLE_PREFIX

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class Gate:
    """The checks a data set must pass before its joint grid is worth running (None: report, do not gate)."""

    min_single: float | None = None   # each single-view model's mean test AUC at least this
    min_gain: float | None = None     # the ensemble's mean gain over the best single view at least this


def run_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per trained run: condition, seed, test AUC/accuracy, utilization and probe AUC per view."""
    rows = []
    for r in results:
        row = {"condition": r["condition"], "seed": r["seed"], "test_auc": r["test_auc"], "test_acc": r["test_acc"],
               "best_val_auc": r["best_val_auc"], "steps": r["steps"], "seconds": r.get("seconds_total")}
        row.update({f"util_{k}": v for k, v in r.get("utilization", {}).items()})
        row.update({f"probe_{k}": v for k, v in r.get("probe_auc", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def ensemble_runs(results: Sequence[dict], views: Sequence[str], y_test: np.ndarray) -> pd.DataFrame:
    """The late-fusion ensemble per seed: test AUC of the sum of the single-view models' logits.

    Only seeds for which every ``only-<view>`` run is present count (the ensemble needs all views)."""
    scores: dict[int, dict[str, np.ndarray]] = {}
    for r in results:
        if r["condition"].startswith(SINGLE_PREFIX):
            scores.setdefault(r["seed"], {})[r["condition"][len(SINGLE_PREFIX):]] = np.asarray(r["test_scores"])
    rows = [{"condition": ENSEMBLE, "seed": seed, "test_auc": roc_auc(y_test, sum(by_view[v] for v in views))}
            for seed, by_view in sorted(scores.items()) if all(v in by_view for v in views)]
    return pd.DataFrame(rows, columns=["condition", "seed", "test_auc"])


def results_table(results: Sequence[dict], views: Sequence[str], y_test: np.ndarray) -> pd.DataFrame:
    """:func:`run_table` plus the ensemble's rows: every value the findings are computed from."""
    return pd.concat([run_table(results), ensemble_runs(results, views, y_test)], ignore_index=True)


def interval(values) -> dict:
    """Mean over runs with its 95% Student-t interval, n and the method's name (NaN interval below 2 runs)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    mean, lo, hi = t_interval(v) if v.size else (math.nan,) * 3
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(v.size), "interval": INTERVAL}


def _by_seed(table: pd.DataFrame, condition: str, column: str) -> pd.Series:
    sub = table[table["condition"] == condition]
    return pd.Series(sub[column].to_numpy(float), index=sub["seed"].to_numpy())


def paired_difference(table: pd.DataFrame, a: str, b: str, column: str = "test_auc") -> dict:
    """``b`` − ``a`` on ``column``, paired by seed over the seeds both hold, with interval, p and MDD."""
    sa, sb = _by_seed(table, a, column), _by_seed(table, b, column)
    seeds = sorted(set(sa.index) & set(sb.index))
    res = difference(sa[seeds].to_numpy(), sb[seeds].to_numpy(), paired=True, alpha=ALPHA, power=POWER)
    return {k: res[k] for k in ("difference", "lo", "hi", "p", "mdd", "method")}


def single_view_checks(table: pd.DataFrame, views: Sequence[str], gate: Gate) -> dict:
    """Each single view's test AUC, the ensemble's, its gain over the best single view, and the gate's verdicts."""
    single = {v: interval(table.loc[table["condition"] == f"{SINGLE_PREFIX}{v}", "test_auc"]) for v in views}
    best = max(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else -1)
    ens = interval(table.loc[table["condition"] == ENSEMBLE, "test_auc"])
    gain = paired_difference(table, f"{SINGLE_PREFIX}{best}", ENSEMBLE)
    checks = []
    if gate.min_single is not None:
        checks += [{"check": f"single-view test AUC, {v}", "value": single[v]["mean"], "threshold": gate.min_single,
                    "passed": bool(single[v]["mean"] >= gate.min_single)} for v in views]
    if gate.min_gain is not None:
        checks.append({"check": f"ensemble gain over {SINGLE_PREFIX}{best}", "value": gain["difference"],
                       "threshold": gate.min_gain, "passed": bool(gain["difference"] >= gate.min_gain)})
    return {"single_view": single, "best_single": best, "ensemble": ens, "ensemble_gain": gain, "checks": checks,
            "passed": all(c["passed"] for c in checks)}


def verdict(difference_: float, p_holm: float, mdd: float, p_exact_min: float = 0.0) -> str:
    """A comparison in words: better or worse than the reference at Holm-corrected 5%, or an honest null.

    Where even the exact (sign-flip) test over these runs cannot reach α (2 seeds: its smallest p is 0.5), a
    small t-test p rests on the normality assumption alone: then no verdict is given."""
    if not np.isfinite(p_holm):
        return "cannot tell (too few runs for a test)"
    if p_exact_min > ALPHA:
        return f"too few seeds to tell (the exact test's smallest p is {p_exact_min:.2g})"
    if p_holm < ALPHA:
        return "better than separate" if difference_ > 0 else "worse than separate"
    return f"no difference detected (smallest detectable: {mdd:.3f})"


def primary(table: pd.DataFrame, joint: Sequence[str]) -> pd.DataFrame:
    """Test AUC of each joint condition against ``separate``: paired by seed, Holm across the conditions."""
    sub = table[table["condition"].isin(joint)]
    values = pd.DataFrame({"run": sub["condition"] + "/" + sub["seed"].astype(str), "group": sub["condition"],
                           "seed": sub["seed"], "quantity": "test_auc", "value": sub["test_auc"]})
    order = [REFERENCE] + [c for c in joint if c != REFERENCE]
    return compare_conditions(values, reference=REFERENCE, order=order, alpha=ALPHA, power=POWER)


def dominant_shares(shares: pd.DataFrame | None) -> dict[str, dict]:
    """Per condition, the view with the largest share of the loss reduction over the whole run, and its share."""
    if shares is None or shares.empty:
        return {}
    whole = shares[(shares["phase"].astype(str) == "all") & (shares["view"] != "shared")]
    out = {}
    for group, sub in whole.groupby("group", sort=False):
        top = sub.loc[sub["share"].idxmax()]
        out[str(group)] = {"view": top["view"], "share": float(top["share"]), "lo": float(top["share_lo"]),
                           "hi": float(top["share_hi"]), "n": int(top["n_runs"]) if "n_runs" in top else None}
    return out


def conditions_block(table: pd.DataFrame, joint: Sequence[str], views: Sequence[str], weak: str,
                     shares: pd.DataFrame | None) -> dict:
    """Per joint condition: test AUC, the comparison with separate, the greedy gap and the secondary endpoints."""
    comp = primary(table, joint).set_index("group")
    dominant = dominant_shares(shares)
    out = {}
    for c in joint:
        rows = table[table["condition"] == c]
        if rows.empty:
            continue
        block = {"test_auc": interval(rows["test_auc"]),
                 "greedy_gap": paired_difference(table, c, ENSEMBLE),
                 f"utilization_{weak}": interval(rows.get(f"util_mean/{weak}", pd.Series(dtype=float))),
                 "probe_auc": {v: interval(rows.get(f"probe_{v}", pd.Series(dtype=float))) for v in views},
                 "dominant": dominant.get(c)}
        if c in comp.index:
            r = comp.loc[c]
            block["vs_separate"] = {"difference": r["difference"], "lo": r["lo"], "hi": r["hi"], "p": r["p"],
                                    "p_holm": r["p_holm"], "mdd": r["mdd"], "mdd_holm": r["mdd_family"],
                                    "design": r["design"], "p_exact": r["p_exact"],
                                    "verdict": verdict(r["difference"], r["p_holm"], r["mdd"], r["p_exact_min"])}
        out[c] = block
    return out


def findings(dataset: str, table: pd.DataFrame, views: Sequence[str], n_test: int, joint: Sequence[str],
             gate: Gate, shares: pd.DataFrame | None = None, notes: Sequence[str] = ()) -> dict:
    """The whole findings record of one data set (see the module docstring) from its :func:`results_table`;
    JSON-ready."""
    checks = single_view_checks(table, views, gate)
    single = checks["single_view"]
    weak = min(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else math.inf)
    seeds = sorted(int(s) for s in table["seed"].unique())
    return {"dataset": dataset, "views": list(views), "seeds": seeds, "n_test": int(n_test),
            "alpha": ALPHA, "power": POWER, "reference": REFERENCE, "weaker_view": weak, **checks,
            "conditions": conditions_block(table, joint, views, weak, shares), "notes": list(notes)}


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or not np.isfinite(d.get("mean", d.get("difference", math.nan))):
        return "–"
    m = d.get("mean", d.get("difference"))
    if not np.isfinite(d.get("lo", math.nan)):
        return f"{m:.{digits}f} (n = {d['n']}: no interval)" if "n" in d else f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def markdown(f: dict) -> str:
    """``findings.md``: the checks, then one table of the primary endpoint and one of the secondary ones."""
    views, weak = f["views"], f["weaker_view"]
    lines = [f"# Findings: {f['dataset']}", "",
             f"Seeds {f['seeds'][0]}–{f['seeds'][-1]} ({len(f['seeds'])} per condition), {f['n_test']} test cases. "
             f"Intervals: 95% Student t over runs; differences paired by seed; p Holm-corrected across the "
             f"comparisons with `{f['reference']}`; MDD: the smallest difference detectable at α = {f['alpha']}, "
             f"{f['power']:.0%} power, from the observed spread and n.", "",
             "## Single views and the ensemble", "", "| model | test AUC [95%] |", "|---|---|"]
    lines += [f"| {SINGLE_PREFIX}{v} | {_ci(f['single_view'][v])} |" for v in views]
    lines += [f"| ensemble (sum of the single-view logits) | {_ci(f['ensemble'])} |",
              f"| ensemble − {SINGLE_PREFIX}{f['best_single']} (paired) | {_ci(f['ensemble_gain'])} |", ""]
    for c in f["checks"]:
        lines.append(f"- check {'passed' if c['passed'] else '**FAILED**'}: {c['check']} = {c['value']:.3f} "
                     f"(needs ≥ {c['threshold']})")
    lines += [*(f"- {n}" for n in f["notes"]), ""]
    if not f["conditions"]:
        return "\n".join(lines + ["The joint grid was not run.", ""])
    lines += ["## Primary endpoint: test AUC against separate", "",
              "| condition | test AUC [95%] | − separate [95%] | p (Holm) | MDD | verdict |", "|---|---|---|---|---|---|"]
    for c, b in f["conditions"].items():
        vs = b.get("vs_separate")
        diff = _ci(vs) if vs else "reference"
        p = f"{vs['p_holm']:.3g}" if vs and np.isfinite(vs["p_holm"]) else "–"
        mdd = f"{vs['mdd']:.3f}" if vs and np.isfinite(vs["mdd"]) else "–"
        lines.append(f"| {c} | {_ci(b['test_auc'])} | {diff} | {p} | {mdd} | {vs['verdict'] if vs else ''} |")
    lines += ["", "## Secondary endpoints", "",
              f"| condition | greedy gap (ensemble − condition) | utilization of {weak} | "
              + " | ".join(f"probe AUC {v}" for v in views) + " | dominant view: share of loss reduction |",
              "|---|---|---|" + "---|" * len(views) + "---|"]
    for c, b in f["conditions"].items():
        dom = b["dominant"]
        dom_s = f"{dom['view']} {dom['share']:.2f} [{dom['lo']:.2f}, {dom['hi']:.2f}]" if dom else "–"
        lines.append(f"| {c} | {_ci(b['greedy_gap'])} | {_ci(b[f'utilization_{weak}'])} | "
                     + " | ".join(_ci(b["probe_auc"][v]) for v in views) + f" | {dom_s} |")
    return "\n".join(lines + [""])
