"""The reproduction: single views and their ensemble first, checks, then the joint grid, findings and report.

    python -m analyses.reproduce                       # phantom, 2 seeds, report into figures/
    python -m analyses.reproduce --dataset digits --out figures/digits
    python -m analyses.reproduce --dataset mfeat --out figures/mfeat
    python -m analyses.reproduce --full                # the larger grid recommended for a paper

Stage 1 trains every ``only-<view>`` model per seed; their late-fusion ensemble (sum of logits) follows from
their test scores. The data set's checks (:data:`GATES`) are then applied: if one fails, the findings say so
and the joint grid is not run (an uninformative grid would only spend the budget). Stage 2 trains the joint
conditions (``analyses.conditions.JOINT``). Runs go to ``<runs>/<dataset>/<condition>-seed<k>`` (cleared first:
a rerun starts fresh). Written beside the report: ``results.csv`` (one row per run), ``test_auc.md`` (mean and
95% t-interval per condition), ``findings.json`` and ``findings.md`` (:mod:`analyses.findings`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analyses import findings as F
from analyses.conditions import ENSEMBLE, SINGLE_PREFIX, grid, sweep
from analyses.train import DATASETS, PHANTOMS, TrainConfig, build_data, config_key, train

# The phantoms train 5 epochs (best-validation checkpoint) in both grids: v3's greedy gap is a property of that
# budget (0.036 at 5 epochs, 2 seeds; at 10 epochs the joint model caught up: 0.007 [-0.022, 0.037], 4 seeds).
_PHANTOM = dict(epochs=5, n_cases=2000, n_test=4000, image_size=48, difficulty=0.25, batch_size=64, lr=1e-3)
_MLP = dict(epochs=30, batch_size=64, lr=1e-3, hidden=64, warmup_steps=20)
FULL = {  # the powered grid, with the seeds of POWERED_SEEDS
    "phantom": dict(_PHANTOM),
    "phantom-v3": dict(_PHANTOM),
    "digits": dict(_MLP),
    "mfeat": dict(_MLP),
    "cbis-ddsm": dict(epochs=40, image_size=256, batch_size=16),
    "vindr-mammo": dict(epochs=40, image_size=256, batch_size=16),
}
QUICK = {  # the quick grid (QUICK_SEEDS; every output labelled quick: mechanism only): the phantoms at half the
    # cases, so that `make reproduce` fits in 15 minutes on 2 cores from a fresh clone
    **FULL,
    "phantom": dict(_PHANTOM, n_cases=1000, n_test=2000),
    "phantom-v3": dict(_PHANTOM, n_cases=1000, n_test=2000),
    "cbis-ddsm": dict(epochs=10, image_size=128, batch_size=32),
    "vindr-mammo": dict(epochs=10, image_size=128, batch_size=32),
}
# Seeds per condition. POWERED_SEEDS: chosen from the pilots' spread (`python -m analyses.power`, README
# Findings) so that the minimum detectable test-AUC difference at the first-step Holm level of the report's
# whole family is at most 0.02 (`make reproduce-full`). Pilots (the quick grid of 2026-12-08, each seed its own
# data): largest sd of a per-seed difference from separate 0.021 on either phantom (2 seeds), 0.030 on digits
# (4 seeds; 0.050 in the 6-seed pilot of 2026-12-07: planned with 0.04 between them), 0.013 on mfeat (4 seeds);
# in report families of about 58 tests (mfeat with the sweep: 103) that needs 25, 75 (80 run) and 13 seeds.
# The grids' own spread then re-planned (variance only, an internal pilot): phantom v3 at 25 seeds had every
# test-AUC MDD at its Holm level at most 0.017 (25 kept); digits at 80 had 0.022 for rebalance-random (a strict
# level: its tiny p ranks it early in the family), so digits runs 110 (MDD ~ 1/sqrt(n): 0.022 * sqrt(80/110)
# = 0.019; the 110-seed grid's largest is 0.019).
POWERED_SEEDS = {"phantom": 25, "phantom-v3": 25, "digits": 110, "mfeat": 13, "cbis-ddsm": 5, "vindr-mammo": 5}
QUICK_SEEDS = {"phantom": 2, "phantom-v3": 2, "digits": 4, "mfeat": 4, "cbis-ddsm": 2, "vindr-mammo": 2}
QUICK_LABEL = "quick: mechanism only"
SKIPPED: dict[str, tuple[str, ...]] = {}
# The phantoms were built so that each view is informative alone and the views complement each other (v3: and
# the joint model falls short of the ensemble): checked before the grid runs. The other data sets are what
# they are: their checks are reported, not enforced.
GATES = {"phantom": F.Gate(min_single=0.75, min_gain=0.03),
         "phantom-v3": F.Gate(min_single=0.75, min_gain=0.03, min_gap=0.02)}
SWEEP_TASK = "mfeat"  # the threshold sweep of re-balancing runs on this fast task


def test_auc_table(table: pd.DataFrame, order: list[str]) -> str:
    """A Markdown table of test AUC per condition (mean, 95% t-interval over seeds)."""
    lines = ["| condition | seeds | test AUC mean | 95% interval (Student t) |", "|---|---|---|---|"]
    for cond in [c for c in order if c in set(table["condition"])]:
        iv = F.interval(table.loc[table["condition"] == cond, "test_auc"])
        lines.append(f"| {cond} | {iv['n']} | {iv['mean']:.3f} | [{iv['lo']:.3f}, {iv['hi']:.3f}] |")
    return "\n".join(lines) + "\n"


_SPLITS: dict = {}


def data_key(cfg: TrainConfig) -> tuple:
    """What determines a run's data: the data set's options and the data seed (each seed its own data)."""
    return (cfg.dataset, cfg.root, cfg.n_cases, cfg.n_test, cfg.image_size, cfg.difficulty, tuple(cfg.mfeat_views),
            cfg.data_key, json.dumps(cfg.extra, sort_keys=True))


def data_for(cfg: TrainConfig, keep: int = 2):
    """The splits of ``cfg``'s data seed (the phantom's from its disk cache), the last ``keep`` data seeds kept
    in memory per process (16 seeds of phantom images would hold about 2 GB in each worker)."""
    key = data_key(cfg)
    if key not in _SPLITS:
        while len(_SPLITS) >= keep:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = build_data(cfg)
    return _SPLITS[key]


def save_examples(splits, path: Path, n: int = 4) -> Path:
    """A small figure of ``n`` test cases (half malignant): both views per case, for the README."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = splits.test.y.numpy()
    idx = list(np.flatnonzero(y == 1)[: n // 2]) + list(np.flatnonzero(y == 0)[: n - n // 2])
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4))
    for j, i in enumerate(idx):
        for r, view in enumerate(splits.view_names):
            ax = axes[r, j]
            ax.imshow(splits.test.views[view][i, 0].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("malignant" if y[i] == 1 else "benign", fontsize=8)
            if j == 0:
                ax.set_ylabel(view.upper(), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _init_worker() -> None:
    """One intra-op thread per worker process: two single-threaded runs use two cores without OpenMP
    barrier spinning, which on a busy machine made a two-threaded run over ten times slower."""
    import torch
    torch.set_num_threads(1)


def _run_one(cfg: TrainConfig) -> dict:
    """Train one run on its own data seed's splits."""
    return train(cfg, data_for(cfg), progress=False)


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,4,7"`` → those seeds."""
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def finished(cfg: TrainConfig) -> dict | None:
    """The results of a run that finished earlier with the same settings (its ``results.json`` is written
    after the recorder closed the run directory), or None: a killed grid resumes with the runs it lacks."""
    path = Path(cfg.out) / "results.json"
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written halfway: train it again
    return r if r.get("config_key") == config_key(cfg) else None  # the same run: same settings, seed and data


def run_grid(cfgs: list[TrainConfig], jobs: int, desc: str, progress: bool) -> list[dict]:
    """Train every configuration not finished yet (``jobs`` worker processes of one thread each); results in
    ``cfgs``'s order, finished runs read from their run directories."""
    results: list[dict] = []
    todo = []
    for c in cfgs:
        done_before = finished(c)
        if done_before is None:
            todo.append(c)
        else:
            results.append({**done_before, "resumed": True})
    bar = tqdm(total=len(todo), desc=desc, unit="run", disable=not progress or None)
    if len(todo) < len(cfgs):
        bar.write(f"[reproduce] {desc}: {len(cfgs) - len(todo)} of {len(cfgs)} runs finished earlier (resumed)")

    def done(r: dict) -> None:
        results.append(r)
        bar.update(1)
        bar.write(f"[reproduce] {r['condition']} seed {r['seed']}: test AUC {r['test_auc']:.3f} "
                  f"({r['seconds_total']:.0f}s, {r['steps']} steps)")

    for c in todo:
        if Path(c.out).exists():
            shutil.rmtree(c.out)  # a run killed halfway: start it again
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            for fut in as_completed([pool.submit(_run_one, c) for c in todo]):
                done(fut.result())
    else:
        for c in todo:
            done(_run_one(c))
    bar.close()
    order = {(c.condition, c.seed): i for i, c in enumerate(cfgs)}
    return sorted(results, key=lambda r: order[(r["condition"], r["seed"])])


def prepare_data(base: TrainConfig, seeds: list[int]) -> float:
    """Build (and cache on disk) every seed's data before the grid, so two workers never generate the same
    phantom at once; returns the seconds it took."""
    t0 = time.perf_counter()
    for k in seeds:
        data_for(replace(base, seed=k))
    return time.perf_counter() - t0


def write_outputs(out: Path, dataset: str, results: list[dict], views: list[str], n_test: int, joint: list[str],
                  order: list[str], shares: pd.DataFrame | None, notes: list[str], quick: str | None,
                  comparisons: pd.DataFrame | None = None) -> dict:
    """results.csv, test_auc.md, findings.json and findings.md under ``out``; returns the findings."""
    table = F.results_table(results, views)
    table.to_csv(out / "results.csv", index=False)
    (out / "test_auc.md").write_text((f"**{quick}**\n\n" if quick else "") + test_auc_table(table, order))
    found = F.findings(dataset, table, views, n_test, joint, GATES.get(dataset, F.Gate()), shares, notes,
                       comparisons, quick=quick, results=results)
    (out / "findings.json").write_text(json.dumps(found, indent=1, default=_json_number))
    (out / "findings.md").write_text(F.markdown(found))
    return found


def _json_number(x):
    """NaN and infinities as null (valid JSON), numpy scalars as numbers."""
    x = float(x)
    return x if math.isfinite(x) else None


def grid_label(full: bool, seeds: int, planned: int) -> str | None:
    """What every output of a grid with fewer seeds than planned says: the quick grid is the mechanism only;
    a powered grid stopped short is partial (its own power check says what it can detect)."""
    if seeds >= planned:
        return None
    return f"partial: {planned} seeds planned" if full else QUICK_LABEL


def invocations(path: Path, timing: dict) -> list[dict]:
    """The wall-clock time of every invocation that built this grid: the earlier ones (from ``path``, when this
    one resumed their runs with the same settings) and this one, so a grid run in pieces keeps its total."""
    this = {"seconds": timing["total_seconds"], "trained": timing["runs"] - timing["resumed_runs"],
            "resumed": timing["resumed_runs"], "seeds": len(timing["seeds"])}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return [this]
    same_grid = earlier.get("dataset") == timing["dataset"] and earlier.get("settings") == timing["settings"]
    if not (timing["resumed_runs"] and same_grid):
        return [this]
    return [*earlier.get("invocations", [{"seconds": earlier.get("total_seconds"), "trained": earlier.get("runs"),
                                          "resumed": 0, "seeds": len(earlier.get("seeds", []))}]), this]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m analyses.reproduce``."""
    p = argparse.ArgumentParser(description="Train the reproduction's conditions x seeds; write findings and report.")
    p.add_argument("--dataset", choices=DATASETS, default="phantom")
    p.add_argument("--root", default="data", help="data folder: the phantom cache, or where your CBIS-DDSM/VinDr-Mammo images are")
    p.add_argument("--seeds", default=None, help="a count (0..n-1) or a comma-separated list (default: per data set)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="figures", help="where the report, findings and figures go")
    p.add_argument("--runs", default="runs", help="where run directories go")
    p.add_argument("--conditions", default=None, help="comma-separated (default: every condition of the grid)")
    p.add_argument("--full", action="store_true", help="the powered grid (POWERED_SEEDS); default: the quick one")
    p.add_argument("--sweep", action="store_true", help="add the re-balancing threshold sweep (conditions.sweep)")
    p.add_argument("--fresh", action="store_true", help="clear the data set's run directories first (default: "
                   "resume, keeping every run that finished)")
    p.add_argument("--no-gate", action="store_true", help="run the joint grid even if a check fails")
    p.add_argument("--max-steps", type=int, default=None, help="stop each run early (smoke tests)")
    p.add_argument("--n-cases", type=int, default=None, help="phantom train+validation cases (default: grid setting)")
    p.add_argument("--n-test", type=int, default=None, help="phantom test cases (default: grid setting)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=float, default=None, help="ResNet width multiplier")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--skip-bad", action="store_true", help="cbis-ddsm/vindr-mammo: skip and count bad exams")
    p.add_argument("--csv", nargs="*", default=None, help="cbis-ddsm/vindr-mammo metadata CSVs")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel, one thread each (default: 2 on CPU with 2+ cores, 1 on a GPU)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def run_joint(joint: list[str], configs, results: list[dict], n_seeds: int, jobs: int, dataset: str,
              progress: bool) -> list[dict]:
    """The joint grid's runs; the random re-balancing control after the guided runs, dose-matched to the guided
    run of the same seed (its window count)."""
    out = []
    first = [c for c in joint if c != "rebalance-random"]
    if first:
        out += run_grid(configs(first), jobs, f"{dataset}: joint grid", progress)
    if "rebalance-random" in joint:
        dose = {r["seed"]: r.get("rebalance", {}).get("windows") for r in [*results, *out]
                if r["condition"] == "rebalance"}
        if len(dose) < n_seeds:
            raise SystemExit("rebalance-random is dose-matched to rebalance: list rebalance in --conditions too")
        out += run_grid(configs(["rebalance-random"], rebalance_windows=dose), jobs,
                        f"{dataset}: dose-matched random control", progress)
    return out


def write_report(run_dirs: list[str], out: Path, has_separate: bool, progress: bool) -> int:
    """``dynamics report`` over the joint runs (``separate`` the reference where it ran); its exit status."""
    from dynamics.cli import main as dynamics_cli
    args = ["report", *run_dirs, "--out", str(out), "--by", "condition",
            *(["--baseline", "separate"] if has_separate else []), *([] if progress else ["--no-progress"])]
    return int(dynamics_cli(args) or 0)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    if a.jobs is None:
        a.jobs = 1 if a.device != "cpu" else min(2, os.cpu_count() or 1)
    settings = dict((FULL if a.full else QUICK)[a.dataset])
    for key in ("epochs", "n_cases", "n_test", "image_size", "width"):
        if getattr(a, key) is not None:
            settings[key] = getattr(a, key)
    seeds = parse_seeds(a.seeds or str((POWERED_SEEDS if a.full else QUICK_SEEDS)[a.dataset]))
    quick = grid_label(a.full, len(seeds), POWERED_SEEDS.get(a.dataset, 0))
    extra = {"skip_bad": a.skip_bad, **({"csv": a.csv} if a.csv else {})} if a.dataset in ("cbis-ddsm", "vindr-mammo") else {}
    base = TrainConfig(dataset=a.dataset, root=a.root, device=a.device, amp=a.amp, max_steps=a.max_steps,
                       extra=extra, **settings)
    run_root = Path(a.runs) / a.dataset
    if a.fresh and run_root.exists():
        shutil.rmtree(run_root)
    t0 = time.perf_counter()
    t_data = prepare_data(base, seeds)
    splits = data_for(replace(base, seed=seeds[0]))
    views = list(splits.view_names)
    order = ([c.strip() for c in a.conditions.split(",") if c.strip()] if a.conditions else
             [c for c in grid(views) if c not in SKIPPED.get(a.dataset, ())])
    if a.sweep:
        order += [c for c in sweep() if c not in order]
    if ENSEMBLE in order:
        order.remove(ENSEMBLE)  # computed, not trained
    single = [c for c in order if c.startswith(SINGLE_PREFIX)]
    joint = [c for c in order if c not in single]
    print(f"[reproduce] {a.dataset}: {len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test per "
          f"seed (each seed its own data and split) in {t_data:.1f}s; {len(order)} conditions x {len(seeds)} seeds"
          + (f"; {quick}" if quick else ""), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.dataset in PHANTOMS:
        save_examples(splits, out / "phantom_examples.png")

    def configs(conds: list[str], **kw) -> list[TrainConfig]:
        # seed-major: consecutive runs share their data seed (the workers keep the last two in memory)
        return [replace(base, condition=c, seed=k, out=str(run_root / f"{c}-seed{k}"),
                        **{f: v[k] for f, v in kw.items()}) for k in seeds for c in conds]

    progress = not a.no_progress
    results = run_grid(configs(single), a.jobs, f"{a.dataset}: single views", progress) if single else []
    gate = GATES.get(a.dataset, F.Gate())
    notes = [f"{quick}: {len(seeds)} seeds, fewer than the {POWERED_SEEDS[a.dataset]} the power analysis asks "
             "for; " + ("no verdict here is powered (make reproduce-full)." if not a.full else
                        "the power check below says what it can detect (rerun with more --seeds: finished runs "
                        "are kept).")] if quick else []
    checks = (F.single_view_checks(F.results_table(results, views), views, gate) if results
              else {"passed": True, "checks": []})
    for c in checks["checks"]:
        print(f"[reproduce] check {'passed' if c['passed'] else 'FAILED'}: {c['check']} = {c['value']:.3f} "
              f"(needs >= {c['threshold']})", flush=True)
    if not checks["passed"] and not a.no_gate:
        notes.append("A check failed, so the joint grid was not run: its comparisons would not be informative "
                     "(--no-gate runs it anyway).")
        joint = []
    elif not checks["passed"]:
        notes.append("A check failed; the joint grid ran anyway (--no-gate): read its comparisons with that in mind.")
    results += run_joint(joint, configs, results, len(seeds), a.jobs, a.dataset, progress)
    # the report compares views within runs: the joint models' (a single-view run has one view to compare)
    run_dirs = [str(run_root / f"{r['condition']}-seed{r['seed']}") for r in results if r["condition"] in joint]
    shares = comparisons = None
    if not a.no_report and run_dirs:
        rc = write_report(run_dirs, out, "separate" in joint, progress)
        if rc:
            return rc
        shares = pd.read_csv(out / "shares.csv")
        comparisons = pd.read_csv(out / "comparisons.csv")  # the report's one Holm family
    found = write_outputs(out, a.dataset, results, views, len(splits.test), joint, order, shares, notes, quick,
                          comparisons)
    print((out / "findings.md").read_text())
    resumed = sum(bool(r.get("resumed")) for r in results)
    timing = {"dataset": a.dataset, "data_seconds": t_data, "total_seconds": time.perf_counter() - t0,
              "runs": len(results), "resumed_runs": resumed, "run_seconds": [r.get("seconds_total") for r in results],
              "jobs": a.jobs, "settings": settings, "seeds": seeds, "checks_passed": found["passed"],
              **({"label": quick} if quick else {})}
    timing["invocations"] = invocations(out / "timing.json", timing)
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print(f"[reproduce] done in {timing['total_seconds']:.0f}s; report and findings in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
