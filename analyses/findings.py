"""What one data set's grid found, as numbers (``findings.json``) and words (``findings.md``).

Everything is at the level of the run (one seed of one condition): per-run values first, then Student-t
intervals over runs (logit scale for AUCs, so they stay inside (0, 1)), differences against the reference
condition (``separate``) paired by seed, each with its minimum detectable difference (80% power, observed spread
and n) at the level Holm's step-down holds it to, so that a null can be told from an underpowered one. The Holm
family is the report's (its ``comparisons.csv``: every test the report prints) when a report was written beside
the findings, so one comparison has one adjusted p everywhere; without a report, the primary comparisons alone.
Below three seeds no interval, test or MDD is given: the values only.

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
from scipy import stats

from dynamics.analysis.comparisons import compare_conditions
from dynamics.analysis.inference import MIN_RUNS, difference, interval_method, scale_of, t_interval, values_only
from dynamics.analysis.metrics import delong_covariance, roc_auc

from analyses.conditions import ALPHA, ENSEMBLE, MDD_TARGET, POWER, REFERENCE, SINGLE_PREFIX


@dataclass(frozen=True)
class Gate:
    """The checks a data set must pass before its joint grid is worth running (None: report, do not gate)."""

    min_single: float | None = None   # each single-view model's mean test AUC at least this
    min_gain: float | None = None     # the ensemble's mean gain over the best single view at least this
    min_gap: float | None = None      # the greedy gap (ensemble − separate) at least this (after the grid)


#: the method of a test-AUC interval that adds the test-set sampling error (each seed its own test set)
COMBINED = ("Student t over runs on the logit scale, variance max(between-run, mean DeLong) (random effects; "
            "each seed its own data and test set)")


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
    max(s², mean V_k) / n, with Student-t quantiles on n − 1 df, on the logit scale (V_k carried there by the
    delta method, V_k / (a_k (1 − a_k))²) so that the interval stays inside (0, 1). Also returns the two parts
    on the AUC scale (``sd_between``, ``sd_delong``) so a reader sees how much of the spread is the test set.
    Below three runs: the values only."""
    v = np.asarray(values, float)
    w = np.asarray(variances, float)
    ok = np.isfinite(v)
    v, w = v[ok], w[ok]
    n = int(v.size)
    out = {"mean": float(v.mean()) if n else math.nan, "lo": math.nan, "hi": math.nan, "n": n,
           "interval": COMBINED, "sd_between": math.nan, "sd_delong": math.nan, "values": [float(x) for x in v]}
    if n < MIN_RUNS:
        out["interval"] = values_only(n)
        return out
    out.update(sd_between=float(v.std(ddof=1)), sd_delong=math.sqrt(float(np.nanmean(w))) if np.isfinite(w).any()
               else 0.0)
    if not ((v > 0) & (v < 1)).all():  # an AUC of 0 or 1 has no logit: the linear scale, clipped to [0, 1]
        half = stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(max(v.var(ddof=1), out["sd_delong"] ** 2) / n)
        out.update(lo=max(out["mean"] - half, 0.0), hi=min(out["mean"] + half, 1.0),
                   interval=COMBINED.replace("logit scale", "AUC scale, clipped to [0, 1] (an AUC on its bound)"))
        return out
    x, wx = np.log(v / (1 - v)), w / (v * (1 - v)) ** 2
    vd = float(np.nanmean(wx)) if np.isfinite(wx).any() else 0.0
    centre = float(x.mean())
    half = stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(max(float(x.var(ddof=1)), vd) / n)
    expit = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    out.update(mean=expit(centre), lo=expit(centre - half), hi=expit(centre + half))
    return out


def test_auc_interval(rows: pd.DataFrame) -> dict:
    """:func:`combined_interval` of a condition's runs (:func:`auc_interval` where no DeLong variance is known)."""
    if "test_auc_var" not in rows or not np.isfinite(rows["test_auc_var"].to_numpy(float)).any():
        return auc_interval(rows["test_auc"])
    return combined_interval(rows["test_auc"], rows["test_auc_var"])


def interval(values, scale: str = "linear") -> dict:
    """Mean over runs with its 95% Student-t interval on ``scale`` (``logit`` for AUCs), n, the method's name
    and the per-run values (NaN interval below three runs)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    mean, lo, hi = t_interval(v, scale=scale) if v.size else (math.nan,) * 3
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(v.size), "interval": interval_method(scale),
            "values": [float(x) for x in v]}


def auc_interval(values) -> dict:
    """:func:`interval` of test AUCs, on the logit scale."""
    return interval(values, scale_of("test_auc"))


def _by_seed(table: pd.DataFrame, condition: str, column: str) -> pd.Series:
    sub = table[table["condition"] == condition]
    return pd.Series(sub[column].to_numpy(float), index=sub["seed"].to_numpy())


def paired_difference(table: pd.DataFrame, a: str, b: str, column: str = "test_auc") -> dict:
    """``b`` − ``a`` on ``column``, paired by seed over the seeds both hold, with interval, p and MDD."""
    sa, sb = _by_seed(table, a, column), _by_seed(table, b, column)
    seeds = sorted(set(sa.index) & set(sb.index))
    res = difference(sa[seeds].to_numpy(), sb[seeds].to_numpy(), paired=True, alpha=ALPHA, power=POWER)
    return {**{k: res[k] for k in ("difference", "lo", "hi", "p", "mdd", "method", "p_exact_min")},
            "n": len(seeds)}


def single_view_checks(table: pd.DataFrame, views: Sequence[str], gate: Gate) -> dict:
    """Each single view's test AUC, the ensemble's, its gain over the best single view, and the gate's verdicts."""
    single = {v: test_auc_interval(table[table["condition"] == f"{SINGLE_PREFIX}{v}"]) for v in views}
    best = max(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else -1)
    ens = test_auc_interval(table[table["condition"] == ENSEMBLE])
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


def verdict(difference_: float, p_holm: float, mdd: float, p_exact_min: float = 0.0, n: int | None = None) -> str:
    """A comparison in words: better or worse than the reference at Holm-corrected 5%, or an honest null with
    its minimum detectable difference (at the comparison's Holm level).

    Below three seeds (``n``) only the values are given. Where even the exact (sign-flip) test over these runs
    cannot reach α, a small t-test p rests on the normality assumption alone: then no verdict is given."""
    if n is not None and 0 < n < MIN_RUNS:
        return values_only(n)
    if not np.isfinite(p_holm):
        return "cannot tell (too few runs for a test)"
    if p_exact_min > ALPHA:
        return f"too few seeds to tell (the exact test's smallest p is {p_exact_min:.2g})"
    if p_holm < ALPHA:
        return "better than separate" if difference_ > 0 else "worse than separate"
    return f"no difference detected (smallest detectable: {mdd:.3f})"


def primary(table: pd.DataFrame, joint: Sequence[str], report: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test AUC of each joint condition against ``separate``, paired by seed: the rows of the report's
    comparisons (``report``: its ``comparisons.csv``, Holm-adjusted in the report's one family) when it has
    them, else computed here with Holm across these conditions alone. ``attrs["family"]`` says which."""
    if report is not None and len(report) and "alpha_holm" in report.columns:
        rows = report[(report["quantity"] == "test_auc") & (report["reference"] == REFERENCE)]
        if len(rows):
            out = rows.reset_index(drop=True)
            out.attrs["family"] = "the report's"
            return out
    sub = table[table["condition"].isin(joint)]
    values = pd.DataFrame({"run": sub["condition"] + "/" + sub["seed"].astype(str), "group": sub["condition"],
                           "seed": sub["seed"], "quantity": "test_auc", "value": sub["test_auc"]})
    order = [REFERENCE] + [c for c in joint if c != REFERENCE]
    out = compare_conditions(values, reference=REFERENCE, order=order, alpha=ALPHA, power=POWER)
    out.attrs["family"] = "the primary comparisons'"
    return out


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
                     shares: pd.DataFrame | None, comparisons: pd.DataFrame | None = None) -> dict:
    """Per joint condition: test AUC, the comparison with separate (in the report's Holm family when
    ``comparisons`` is the report's table), the greedy gap and the secondary endpoints."""
    comp = primary(table, joint, comparisons).set_index("group")
    dominant = dominant_shares(shares)
    out = {}
    for c in joint:
        rows = table[table["condition"] == c]
        if rows.empty:
            continue
        block = {"test_auc": test_auc_interval(rows),
                 "greedy_gap": paired_difference(table, c, ENSEMBLE),
                 f"utilization_{weak}": interval(rows.get(f"util_mean/{weak}", pd.Series(dtype=float))),
                 "probe_auc": {v: auc_interval(rows.get(f"probe_{v}", pd.Series(dtype=float))) for v in views},
                 "dominant": dominant.get(c)}
        if c.startswith("rebalance") and c != "rebalance-random" and "rebalance-random" in set(table["condition"]):
            block["vs_random"] = paired_difference(table, "rebalance-random", c)  # guided − its dose-matched control
        if c in comp.index:
            r = comp.loc[c]
            n = int(min(r["n_reference"], r["n_group"]))
            block["vs_separate"] = {"difference": r["difference"], "lo": r["lo"], "hi": r["hi"], "p": r["p"],
                                    "p_holm": r["p_holm"], "alpha_holm": r["alpha_holm"], "mdd": r["mdd"],
                                    "design": r["design"], "p_exact": r["p_exact"], "n": n,
                                    "p_exact_min": r["p_exact_min"], "family": comp.attrs.get("family", ""),
                                    "verdict": verdict(r["difference"], r["p_holm"], r["mdd"], r["p_exact_min"], n)}
        out[c] = block
    return out


def findings(dataset: str, table: pd.DataFrame, views: Sequence[str], n_test: int, joint: Sequence[str],
             gate: Gate, shares: pd.DataFrame | None = None, notes: Sequence[str] = (),
             comparisons: pd.DataFrame | None = None, *, quick: str | None = None,
             results: Sequence[dict] = ()) -> dict:
    """The whole findings record of one data set (see the module docstring) from its :func:`results_table`;
    JSON-ready. ``shares`` and ``comparisons``: the report's ``shares.csv`` and ``comparisons.csv`` (its Holm
    family is then the findings')."""
    checks = single_view_checks(table, views, gate)
    single = checks["single_view"]
    weak = min(views, key=lambda v: single[v]["mean"] if np.isfinite(single[v]["mean"]) else math.inf)
    seeds = sorted(int(s) for s in table["seed"].unique())
    found = {"dataset": dataset, "views": list(views), "seeds": seeds, "n_test": int(n_test),
            "alpha": ALPHA, "power": POWER, "reference": REFERENCE, "weaker_view": weak, **checks,
            "conditions": conditions_block(table, joint, views, weak, shares, comparisons), "notes": list(notes),
            "data_seeds": sorted(int(s) for s in table.get("data_seed", table["seed"]).dropna().unique()),
            **({"label": quick} if quick else {})}
    found["power_check"] = power_check(found["conditions"])
    from analyses.claims import claims  # the papers' claims, read from the findings above and the runs
    found["claims"] = claims(found, results)
    dose = table[table["condition"].astype(str).str.startswith("rebalance")]
    found["rebalance_dose"] = {str(c): {"windows": interval(g["rebalance_windows"]), "steps": interval(g["rebalance_steps"])}
                               for c, g in dose.groupby("condition")}
    return found


def power_check(conditions: dict, target: float = MDD_TARGET) -> dict:
    """Whether every test-AUC comparison with the reference can detect ``target``: the largest MDD at its Holm
    level, which condition has it, and the verdict (not met while any comparison has no MDD, e.g. at n < 3)."""
    mdds = {c: b["vs_separate"]["mdd"] for c, b in conditions.items() if b.get("vs_separate")}
    if not mdds:
        return {"target": target, "worst_mdd": None, "worst": None, "met": False, "missing": []}
    missing = sorted(c for c, m in mdds.items() if m is None or not np.isfinite(m))
    finite = {c: m for c, m in mdds.items() if c not in missing}
    worst = max(finite, key=finite.get) if finite else None
    return {"target": target, "worst_mdd": finite[worst] if worst else None, "worst": worst,
            "met": bool(not missing and finite[worst] <= target), "missing": missing}


def power_words(pc: dict) -> str:
    """:func:`power_check` in words: met or not, and the largest MDD."""
    if pc["worst"] is None:
        return (f"no comparison has an MDD (below {MIN_RUNS} seeds: values only), so the target {pc['target']} "
                "is not shown met")
    verdict = "met" if pc["met"] else "**not met**"
    gaps = f"; no MDD for {', '.join(pc['missing'])}" if pc["missing"] else ""
    return (f"MDD ≤ {pc['target']} at the Holm level {verdict}: the largest is {pc['worst_mdd']:.3f} "
            f"({pc['worst']}){gaps}")


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or not np.isfinite(d.get("mean", d.get("difference", math.nan))):
        return "–"
    m = d.get("mean", d.get("difference"))
    if "n" in d and 0 < d["n"] < MIN_RUNS:
        values = d.get("values")
        shown = ", ".join(f"{v:.{digits}f}" for v in values) if values else f"{m:.{digits}f}"
        return f"{values_only(d['n'])} ({shown})"
    if not np.isfinite(d.get("lo", math.nan)):
        return f"{m:.{digits}f} (n = {d['n']}: no interval)" if "n" in d else f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _family_words(f: dict) -> str:
    """Which Holm family the findings' p-values are in (the report's, or the primary comparisons')."""
    fams = {b["vs_separate"].get("family", "") for b in f["conditions"].values() if b.get("vs_separate")}
    fam = next(iter(fams), "the primary comparisons'") if len(fams) == 1 else "the primary comparisons'"
    if fam == "the report's":
        return "p Holm-corrected in the report's one family (every test of report.md; comparisons.csv)"
    return f"p Holm-corrected across the comparisons with `{f['reference']}` (no report was written)"


def markdown(f: dict) -> str:
    """``findings.md``: the checks, then one table of the primary endpoint and one of the secondary ones."""
    views, weak = f["views"], f["weaker_view"]
    lines = [f"# Findings: {f['dataset']}", "", *([f"**{f['label']}**", ""] if f.get("label") else []),
             f"Seeds {f['seeds'][0]}–{f['seeds'][-1]} ({len(f['seeds'])} per condition), each with its own data, "
             f"split and test set ({f['n_test']} test cases each). Test AUC: {COMBINED}. Other intervals: 95% "
             f"Student t over runs (AUCs on the logit scale); differences paired by seed; "
             f"{_family_words(f) if f['conditions'] else 'no comparisons'}; MDD: the smallest difference detectable "
             f"with {f['power']:.0%} power at the comparison's Holm level (from α = {f['alpha']}), from the "
             f"observed spread and n; below {MIN_RUNS} seeds the values only.", "",
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
    if f.get("power_check"):
        lines += ["", f"Power: {power_words(f['power_check'])}."]
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
