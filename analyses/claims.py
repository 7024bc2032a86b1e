"""The papers' claims, each answered per task: held, did not hold, or cannot tell, with interval and MDD.

MIDL 2020 (Wu et al., view-wise model): (1) one view's layers have larger gradient norms, (2) one view does
most of the loss reduction, (3) shared weights improve test AUC, (4) modality dropout improves test AUC.
ICML 2022 (Wu et al., greedy learning): (5) the jointly trained model falls short of the late-fusion ensemble
(the greedy gap), (6) re-balancing by conditional learning speed improves test AUC.

Per-run values only (the run is the unit): (1) and (2) from ``separate``'s runs, as the per-run log ratio of
the two views' whole-run gradient norms (also per parameter: ‖g‖/√N, since views of different widths differ
in norm by their size alone) and the per-run difference of their loss-reduction shares; (3), (4), (6) from the
primary comparisons with ``separate`` (Holm-corrected, MDD at the Holm level); (5) paired by seed.

The words: *held* when the test rejects at its level in the claimed direction; *did not hold* when it
rejects in the other direction, or when it does not reject and the MDD is at most the bound that matters
(:data:`NULL_BOUND` in test AUC: a powered null); *cannot tell* otherwise (the MDD says how large an effect
could have been missed).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from dynamics.analysis.inference import MIN_RUNS, difference, values_only

from analyses.conditions import ALPHA, MDD_TARGET as NULL_BOUND, POWER, REFERENCE
PAPERS = {"midl2020": "Wu et al., MIDL 2020", "icml2022": "Wu et al., ICML 2022"}


def word(p: float, difference: float, mdd: float, p_exact_min: float = 0.0, bound: float = NULL_BOUND) -> str:
    """held / did not hold / cannot tell (see the module docstring) from a test's p, sign and MDD."""
    if not np.isfinite(p) or p_exact_min > ALPHA:
        return "cannot tell"
    if p < ALPHA:
        return "held" if difference > 0 else "did not hold"
    return "did not hold" if np.isfinite(mdd) and mdd <= bound else "cannot tell"


def one_sample(values, *, log: bool = False) -> dict:
    """Mean of per-run values (geometric mean of ratios with ``log``) with its Student-t interval, the t-test
    and exact sign-flip p against 0 (ratio 1), and the MDD at α = 0.05, 80% power (on the log scale with
    ``log``: reported as a ratio): :func:`dynamics.analysis.inference.difference` of the values against 0,
    paired, so the package's one rule holds (below three runs the values only)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    x = np.log(v) if log else v
    res = difference(np.zeros_like(x), x, paired=True, alpha=ALPHA, power=POWER)
    tr = math.exp if log else float
    back = {k: (tr(res[k]) if np.isfinite(res[k]) else math.nan) for k in ("difference", "lo", "hi", "mdd")}
    method = res["method"].replace("paired t by seed", "Student t over runs").replace("pairs", "runs")
    return {"n": int(x.size), "mean": back["difference"], "lo": back["lo"], "hi": back["hi"], "p": res["p"],
            "p_exact": res["p_exact"], "p_exact_min": res["p_exact_min"], "mdd": back["mdd"],
            "interval": method + (" (log scale)" if log else ""), "values": [float(a) for a in v]}


def dynamics_table(results: Sequence[dict], condition: str = REFERENCE) -> pd.DataFrame:
    """Per run of ``condition``: each view's whole-run Σ‖g‖², loss-reduction share and parameter count."""
    rows = []
    for r in results:
        if r["condition"] != condition or "dynamics" not in r:
            continue
        for view, d in r["dynamics"].items():
            rows.append({"seed": r["seed"], "view": view, **d})
    return pd.DataFrame(rows, columns=["seed", "view", "grad_sq", "loss_reduction", "share", "n_params"])


def imbalance(results: Sequence[dict], views: Sequence[str], condition: str = REFERENCE) -> dict:
    """Claims (1) and (2) in ``condition``'s runs: view a = ``views[0]`` against b = ``views[1]``."""
    t = dynamics_table(results, condition)
    a, b = views[0], views[1]
    if t.empty:
        return {}
    wide = t.pivot(index="seed", columns="view")
    g_a, g_b = wide[("grad_sq", a)], wide[("grad_sq", b)]
    n_a, n_b = wide[("n_params", a)], wide[("n_params", b)]
    ratio = np.sqrt(g_a / g_b)
    per_param = np.sqrt((g_a / n_a) / (g_b / n_b))
    share = one_sample(wide[("share", a)] - wide[("share", b)])
    raw, norm = one_sample(ratio, log=True), one_sample(per_param, log=True)
    dev = lambda r: abs(math.log(r)) if np.isfinite(r) and r > 0 else math.nan
    return {
        "gradient_norm": {"views": [a, b], "ratio": raw, "ratio_per_parameter": norm,
                          "n_params": {a: int(n_a.iloc[0]), b: int(n_b.iloc[0])},
                          "verdict": word(raw["p"], 1.0, math.nan, raw["p_exact_min"]),
                          "verdict_per_parameter": word(norm["p"], 1.0, math.nan, norm["p_exact_min"]),
                          "larger": a if raw["mean"] > 1 else b, "deviation_log": dev(raw["mean"])},
        "loss_reduction": {"views": [a, b], "share_difference": share,
                           "share": {v: one_sample(wide[("share", v)]) for v in (a, b)},
                           "verdict": word(share["p"], 1.0, math.nan, share["p_exact_min"]),
                           "larger": a if share["mean"] > 0 else b},
    }


def _from_comparison(block: dict | None, name: str) -> dict:
    """A claim "``name`` beats separate" from its primary comparison (Holm-corrected p, MDD at the Holm level)."""
    vs = (block or {}).get("vs_separate")
    if not vs:
        return {"condition": name, "verdict": "cannot tell", "why": "not run"}
    mdd = vs.get("mdd_holm", vs.get("mdd"))
    return {"condition": name, "difference": vs["difference"], "lo": vs["lo"], "hi": vs["hi"],
            "p_holm": vs["p_holm"], "mdd_holm": mdd, "method": vs.get("design"), "n": vs.get("n"),
            "verdict": word(vs["p_holm"], vs["difference"], mdd, vs.get("p_exact_min", 0.0))}


def claims(found: dict, results: Sequence[dict]) -> dict:
    """Every claim of both papers for one task's findings (``found``) and its runs (``results``)."""
    conds = found.get("conditions", {})
    views = found["views"]
    out = {"midl2020": {}, "icml2022": {}}
    out["midl2020"].update(imbalance(results, views))
    out["midl2020"]["shared_weights_help"] = [_from_comparison(conds.get(c), c)
                                              for c in ("shared", "shared-swapped") if c in conds]
    out["midl2020"]["modality_dropout_helps"] = [_from_comparison(conds[c], c) for c in conds
                                                 if c.startswith("dropout")]
    gap = (conds.get(REFERENCE) or {}).get("greedy_gap")
    if gap:
        out["icml2022"]["greedy_gap"] = {**gap, "verdict": word(gap["p"], gap["difference"], gap["mdd"],
                                                                gap.get("p_exact_min", 0.0))}
    out["icml2022"]["rebalancing_helps"] = [_from_comparison(conds.get(c), c) for c in conds
                                            if c.startswith("rebalance") and c != "rebalance-random"]
    vs = (conds.get("rebalance") or {}).get("vs_random")
    if vs:  # the guidance itself: guided against its dose-matched random control, paired by seed
        out["icml2022"]["guidance_helps"] = {**vs, "verdict": word(vs["p"], vs["difference"], vs["mdd"],
                                                                   vs.get("p_exact_min", 0.0))}
    if "rebalance-random" in conds:
        out["icml2022"]["random_control"] = _from_comparison(conds["rebalance-random"], "rebalance-random")
    return out


def number(x, digits: int = 3) -> str:
    """A value for a Markdown cell ("–" when missing or not finite; a true minus sign)."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}".replace("-", "−")


def p_value(x) -> str:
    """A p-value: 3 decimals, or "< 10⁻³" (a printed 0.000 would claim a p of zero)."""
    return "–" if x is None or not np.isfinite(x) else ("< 10⁻³" if x < 1e-3 else f"{x:.3f}")


def shown(d: dict | None, key: str = "mean") -> str:
    """A value with its interval; below three runs the per-run values (or the value) and the words saying so,
    never an interval computed from them."""
    if not d or d.get(key) is None:
        return "–"
    n = d.get("n")
    if isinstance(n, int) and 0 < n < MIN_RUNS:
        values = d.get("values")
        return f"{values_only(n)} ({', '.join(number(v) for v in values) if values else number(d[key])})"
    if d.get("lo") is None or not np.isfinite(d["lo"]):
        return number(d[key])
    return f"{number(d[key])} [{number(d['lo'])}, {number(d['hi'])}]"




def rows(task: str, c: dict) -> list[tuple[str, str, str, str]]:
    """(claim, task, verdict, evidence) for every claim of one task's ``claims`` record, as Markdown cells."""
    out = []
    m, i = c.get("midl2020", {}), c.get("icml2022", {})
    g = m.get("gradient_norm")
    if g:
        a, b = g["views"]
        ev = (f"‖g_{a}‖/‖g_{b}‖ {shown(g['ratio'])} (geometric mean, t over {g['ratio']['n']} runs, exact p "
              f"{p_value(g['ratio']['p_exact'])}); per parameter (‖g‖/√N, N {g['n_params'][a]} vs "
              f"{g['n_params'][b]}): {shown(g['ratio_per_parameter'])}, {g['verdict_per_parameter']}")
        out.append(("MIDL 2020: one view has larger gradient norms", task, g["verdict"], ev))
    s = m.get("loss_reduction")
    if s:
        a, b = s["views"]
        ev = (f"share {a} − share {b} of the loss reduction {shown(s['share_difference'])} (t over "
              f"{s['share_difference']['n']} runs, exact p {p_value(s['share_difference']['p_exact'])})")
        out.append(("MIDL 2020: one view does most of the learning", task, s["verdict"], ev))
    for key, claim in (("shared_weights_help", "MIDL 2020: shared weights help"),
                       ("modality_dropout_helps", "MIDL 2020: modality dropout helps")):
        for r in m.get(key, []):
            out.append((claim, task, r["verdict"], _vs(r)))
    gap = i.get("greedy_gap")
    if gap:
        out.append(("ICML 2022: greedy gap (ensemble − separate) > 0", task, gap["verdict"],
                    f"{shown(gap, 'difference')}, MDD {number(gap['mdd'])} (paired t by seed, α 0.05)"))
    for r in i.get("rebalancing_helps", []):
        claim = "ICML 2022: re-balancing helps" + ("" if r["condition"] == "rebalance" else " (threshold sweep)")
        out.append((claim, task, r["verdict"], _vs(r)))
    g = i.get("guidance_helps")
    if g:
        out.append(("ICML 2022: the guidance helps (`rebalance` − its dose-matched random control)", task,
                    g["verdict"], f"{shown(g, 'difference')}, MDD {number(g['mdd'])} (paired t by seed, α 0.05)"))
    r = i.get("random_control")
    if r:  # a control, not a claim: its verdict says what it did
        out.append(("control: random re-balancing at the guided dose − separate", task, _control_word(r), _vs(r)))
    return out


def _control_word(r: dict) -> str:
    """The control's result in words: better or worse than separate, no difference (powered), or cannot tell."""
    if r["verdict"] == "held":
        return "better than separate"
    if r["verdict"] == "did not hold":
        return "worse than separate" if r["p_holm"] < ALPHA else f"no difference (MDD ≤ {NULL_BOUND})"
    return r["verdict"]


def _vs(r: dict) -> str:
    if "difference" not in r:
        return f"`{r['condition']}` {r.get('why', '')}"
    return (f"`{r['condition']}` − separate {shown(r, 'difference')}, p (Holm) {p_value(r['p_holm'])}, "
            f"MDD at the Holm level {number(r['mdd_holm'])}")


def markdown(tasks: dict[str, dict]) -> str:
    """One table: every claim of both papers, per task (``tasks``: task name → its findings record)."""
    lines = ["| claim | task | verdict | evidence |", "|---|---|---|---|"]
    for task, found in tasks.items():
        label = f"{task} ({found['label']})" if found.get("label") else task
        lines += [f"| {a} | {b} | {v} | {e} |" for a, b, v, e in rows(label, found.get("claims", {}))]
    return "\n".join(lines) + "\n"
