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
from scipy import stats

from dynamics.analysis.inference import INTERVAL, difference, t_interval
from dynamics.analysis.metrics import delong_covariance, roc_auc

from analyses.conditions import ENSEMBLE, REFERENCE, SINGLE_PREFIX

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class Gate:
    """The checks a data set must pass before its joint grid is worth running (None: report, do not gate)."""

    min_single: float | None = None   # each single-view model's mean test AUC at least this
    min_gain: float | None = None     # the ensemble's mean gain over the best single view at least this
    min_gap: float | None = None      # the greedy gap (ensemble − separate) at least this (after the grid)


#: the method of a test-AUC interval that adds the test-set sampling error (each seed its own test set)
COMBINED = ("Student t over runs, variance max(between-run, mean DeLong) (random effects; each seed its own "
            "data and test set)")


def _delong_var(r: dict) -> float:
    """DeLong's variance of a run's test AUC (NaN when the run kept no labels or scores)."""
    if "test_y" not in r or "test_scores" not in r:
        return math.nan
    return float(delong_covariance(r["test_y"], r["test_scores"])[1][0, 0])


def run_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per trained run: condition, seed, data seed, test AUC with its DeLong variance, accuracy,
    utilization and probe AUC per view, re-balancing's dose."""
    rows = []
    for r in results:
        row = {"condition": r["condition"], "seed": r["seed"], "data_seed": r.get("data_seed", r["seed"]),
               "test_auc": r["test_auc"], "test_auc_var": _delong_var(r), "test_acc": r["test_acc"],
               "best_val_auc": r["best_val_auc"], "steps": r["steps"], "seconds": r.get("seconds_total"),
               "rebalance_windows": r.get("rebalance", {}).get("windows"),
               "rebalance_steps": r.get("rebalance", {}).get("steps")}
        row.update({f"util_{k}": v for k, v in r.get("utilization", {}).items()})
        row.update({f"probe_{k}": v for k, v in r.get("probe_auc", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def ensemble_runs(results: Sequence[dict], views: Sequence[str], y_test: np.ndarray | None = None) -> pd.DataFrame:
    """The late-fusion ensemble per seed: test AUC (and its DeLong variance) of the sum of the single-view
    models' logits, on that seed's test set (each run's ``test_y``; ``y_test`` for runs that kept none).

    Only seeds for which every ``only-<view>`` run is present count (the ensemble needs all views)."""
    scores: dict[int, dict[str, np.ndarray]] = {}
    labels: dict[int, np.ndarray] = {}
    for r in results:
        if r["condition"].startswith(SINGLE_PREFIX):
            scores.setdefault(r["seed"], {})[r["condition"][len(SINGLE_PREFIX):]] = np.asarray(r["test_scores"])
            y = r.get("test_y", y_test)
            if y is None:
                raise ValueError(f"run {r['condition']}/seed {r['seed']} kept no test labels and none were given")
            if r["seed"] in labels and not np.array_equal(labels[r["seed"]], y):
                raise ValueError(f"seed {r['seed']}: the single-view runs were tested on different test sets")
            labels[r["seed"]] = np.asarray(y)
    rows = []
    for seed, by_view in sorted(scores.items()):
        if all(v in by_view for v in views):
            total = sum(by_view[v] for v in views)
            y = labels[seed]
            var = delong_covariance(y, total)[1][0, 0] if min(y.sum(), (1 - y).sum()) >= 2 else math.nan
            rows.append({"condition": ENSEMBLE, "seed": seed, "test_auc": roc_auc(y, total), "test_auc_var": var})
    return pd.DataFrame(rows, columns=["condition", "seed", "test_auc", "test_auc_var"])


def results_table(results: Sequence[dict], views: Sequence[str], y_test: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`run_table` plus the ensemble's rows: every value the findings are computed from."""
    return pd.concat([run_table(results), ensemble_runs(results, views, y_test)], ignore_index=True)


def combined_interval(values, variances, level: float = 0.95) -> dict:
    """Mean test AUC over runs whose seeds each drew their own test set, with an interval that holds the
    test-set sampling error as well as the training randomness (:data:`COMBINED`).

    Run k's AUC is θ + u_k + e_k (u: training and data draw, e: test-set sampling with DeLong variance V_k).
    The between-run variance s² estimates Var(u) + Var(e) already, but from n − 1 degrees of freedom it can
    fall below the test-set part alone, which DeLong measures per run: the variance of the mean is taken as
    max(s², mean V_k) / n, with Student-t quantiles on n − 1 df. Also returns the two parts (``sd_between``,
    ``sd_delong``) so a reader sees how much of the spread is the test set."""
    v = np.asarray(values, float)
    w = np.asarray(variances, float)
    ok = np.isfinite(v)
    v, w = v[ok], w[ok]
    n = int(v.size)
    out = {"mean": float(v.mean()) if n else math.nan, "lo": math.nan, "hi": math.nan, "n": n,
           "interval": COMBINED, "sd_between": math.nan, "sd_delong": math.nan}
    if n < 2:
        return out
    s2 = float(v.var(ddof=1))
    vd = float(np.nanmean(w)) if np.isfinite(w).any() else 0.0
    half = stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(max(s2, vd) / n)
    out.update(lo=out["mean"] - half, hi=out["mean"] + half, sd_between=math.sqrt(s2), sd_delong=math.sqrt(vd))
    return out


def auc_interval(rows: pd.DataFrame) -> dict:
    """:func:`combined_interval` of a condition's runs (Student t alone where no DeLong variance is known)."""
    if "test_auc_var" not in rows or not np.isfinite(rows["test_auc_var"].to_numpy(float)).any():
        return interval(rows["test_auc"])
    return combined_interval(rows["test_auc"], rows["test_auc_var"])


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
    return {k: res[k] for k in ("difference", "lo", "hi", "p", "mdd", "method", "p_exact_min")}


def single_view_checks(table: pd.DataFrame, views: Sequence[str], gate: Gate) -> dict:
    """Each single view's test AUC, the ensemble's, its gain over the best single view, and the gate's verdicts."""
    single = {v: auc_interval(table[table["condition"] == f"{SINGLE_PREFIX}{v}"]) for v in views}
    best = max(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else -1)
    ens = auc_interval(table[table["condition"] == ENSEMBLE])
    gain = paired_difference(table, f"{SINGLE_PREFIX}{best}", ENSEMBLE)
    checks = []
    if gate.min_single is not None:
        checks += [{"check": f"single-view test AUC, {v}", "value": single[v]["mean"], "threshold": gate.min_single,
                    "passed": bool(single[v]["mean"] >= gate.min_single)} for v in views]
    if gate.min_gain is not None:
        checks.append({"check": f"ensemble gain over {SINGLE_PREFIX}{best}", "value": gain["difference"],
                       "threshold": gate.min_gain, "passed": bool(gain["difference"] >= gate.min_gain)})
    if gate.min_gap is not None and (table["condition"] == REFERENCE).any():
        gap = paired_difference(table, REFERENCE, ENSEMBLE)
        checks.append({"check": f"greedy gap (ensemble − {REFERENCE})", "value": gap["difference"],
                       "threshold": gate.min_gap, "passed": bool(gap["difference"] >= gate.min_gap)})
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
        block = {"test_auc": auc_interval(rows),
                 "greedy_gap": paired_difference(table, c, ENSEMBLE),
                 f"utilization_{weak}": interval(rows.get(f"util_mean/{weak}", pd.Series(dtype=float))),
                 "probe_auc": {v: interval(rows.get(f"probe_{v}", pd.Series(dtype=float))) for v in views},
                 "dominant": dominant.get(c)}
        if c.startswith("rebalance") and c != "rebalance-random" and "rebalance-random" in set(table["condition"]):
            block["vs_random"] = paired_difference(table, "rebalance-random", c)  # guided − its dose-matched control
        if c in comp.index:
            r = comp.loc[c]
            block["vs_separate"] = {"difference": r["difference"], "lo": r["lo"], "hi": r["hi"], "p": r["p"],
                                    "p_holm": r["p_holm"], "mdd": r["mdd"], "mdd_holm": r["mdd_family"],
                                    "design": r["design"], "p_exact": r["p_exact"],
                                    "p_exact_min": r["p_exact_min"],
                                    "verdict": verdict(r["difference"], r["p_holm"], r["mdd"], r["p_exact_min"])}
        out[c] = block
    return out


def findings(dataset: str, table: pd.DataFrame, views: Sequence[str], n_test: int, joint: Sequence[str],
             gate: Gate, shares: pd.DataFrame | None = None, notes: Sequence[str] = (), *,
             quick: str | None = None, results: Sequence[dict] = ()) -> dict:
    """The whole findings record of one data set (see the module docstring) from its :func:`results_table`;
    JSON-ready."""
    checks = single_view_checks(table, views, gate)
    single = checks["single_view"]
    weak = min(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else math.inf)
    seeds = sorted(int(s) for s in table["seed"].unique())
    found = {"dataset": dataset, "views": list(views), "seeds": seeds, "n_test": int(n_test),
            "alpha": ALPHA, "power": POWER, "reference": REFERENCE, "weaker_view": weak, **checks,
            "conditions": conditions_block(table, joint, views, weak, shares), "notes": list(notes),
            "data_seeds": sorted(int(s) for s in table.get("data_seed", table["seed"]).dropna().unique()),
            **({"label": quick} if quick else {})}
    from analyses.claims import claims  # the papers' claims, read from the findings above and the runs
    found["claims"] = claims(found, results)
    dose = table[table["condition"].astype(str).str.startswith("rebalance")]
    found["rebalance_dose"] = {str(c): {"windows": interval(g["rebalance_windows"]), "steps": interval(g["rebalance_steps"])}
                               for c, g in dose.groupby("condition")}
    return found


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
    lines = [f"# Findings: {f['dataset']}", "", *([f"**{f['label']}**", ""] if f.get("label") else []),
             f"Seeds {f['seeds'][0]}–{f['seeds'][-1]} ({len(f['seeds'])} per condition), each with its own data, "
             f"split and test set ({f['n_test']} test cases each). Test AUC: {COMBINED}. "
             f"Other intervals: 95% Student t over runs; differences paired by seed; p Holm-corrected across the "
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
    if f.get("claims"):
        from analyses.claims import markdown as claims_markdown
        lines += ["", "## The papers' claims", "", claims_markdown({f["dataset"]: f})]
    return "\n".join(lines + [""])
