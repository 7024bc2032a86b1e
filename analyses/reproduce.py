"""The grid: every condition x seed on one data set, then the imbalance report with figures.

    python -m analyses.reproduce                       # phantom, 3 seeds, report into figures/
    python -m analyses.reproduce --dataset mfeat --out figures/mfeat
    python -m analyses.reproduce --full                # the larger grid recommended for a paper

Runs go to ``<runs>/<dataset>/<condition>-seed<k>`` (cleared first: a rerun starts fresh). ``results.csv``
(one row per run: test AUC/accuracy, utilization, seconds) and ``test_auc.md`` (mean and 95% t-interval over
seeds per condition) are written beside the report.
"""
from __future__ import annotations

import argparse
import json
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

from dynamics.analysis.metrics import t_half_width

from analyses.models import CONDITIONS
from analyses.train import DATASETS, TrainConfig, build_data, train

# Defaults sized so that `make reproduce` (3 conditions x 3 seeds) fits in 15 minutes on 2 CPU cores.
QUICK = {
    "phantom": dict(epochs=14, n_cases=3000, image_size=64, batch_size=64, lr=1e-3),
    "mfeat": dict(epochs=30, batch_size=64, lr=1e-3, hidden=64, warmup_steps=20),
    "cbis-ddsm": dict(epochs=10, image_size=128, batch_size=32),
    "vindr-mammo": dict(epochs=10, image_size=128, batch_size=32),
}
FULL = {  # the grid recommended for a paper (GPU or patience): more data, larger images, more seeds/epochs
    "phantom": dict(epochs=40, n_cases=12000, image_size=128, batch_size=64, lr=1e-3),
    "mfeat": dict(epochs=100, batch_size=64, lr=1e-3, hidden=128),
    "cbis-ddsm": dict(epochs=40, image_size=256, batch_size=16),
    "vindr-mammo": dict(epochs=40, image_size=256, batch_size=16),
}


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval over seeds (NaN interval for fewer than 2 values)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(t_half_width(v.std(ddof=1), v.size, level))
    return m, m - half, m + half


def summarise(results: list[dict]) -> tuple[pd.DataFrame, str]:
    """Per-run table and a Markdown table of test AUC per condition (mean, 95% t-interval over seeds)."""
    rows = [{"condition": r["condition"], "seed": r["seed"], "test_auc": r["test_auc"], "test_acc": r["test_acc"],
             "best_val_auc": r["best_val_auc"], "steps": r["steps"], "seconds": r["seconds_total"],
             "attribution": r["attribution"], **{f"util_{k}": v for k, v in r["utilization"].items()}}
            for r in results]
    df = pd.DataFrame(rows)
    lines = ["| condition | seeds | test AUC mean | 95% interval |", "|---|---|---|---|"]
    for cond in [c for c in CONDITIONS if c in set(df["condition"])]:
        m, lo, hi = t_interval(df.loc[df["condition"] == cond, "test_auc"].to_numpy())
        lines.append(f"| {cond} | {int((df['condition'] == cond).sum())} | {m:.3f} | [{lo:.3f}, {hi:.3f}] |")
    return df, "\n".join(lines) + "\n"


_SPLITS: dict = {}


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
    """Train one run in a worker; the data set is built once per worker (the phantom comes from its cache)."""
    key = (cfg.dataset, cfg.root, cfg.n_cases, cfg.image_size, cfg.difficulty, tuple(cfg.mfeat_views),
           json.dumps(cfg.extra, sort_keys=True))
    if key not in _SPLITS:
        _SPLITS[key] = build_data(cfg)
    return train(cfg, _SPLITS[key], progress=False)


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,4,7"`` → those seeds."""
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train conditions x seeds and write the imbalance report.")
    p.add_argument("--dataset", choices=DATASETS, default="phantom")
    p.add_argument("--root", default="data", help="data folder: the phantom cache, or where your CBIS-DDSM/VinDr-Mammo images are")
    p.add_argument("--seeds", default="3", help="a count (0..n-1) or a comma-separated list")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="figures", help="where the report and figures go")
    p.add_argument("--runs", default="runs", help="where run directories go")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--full", action="store_true", help="the larger, slower grid recommended for a paper")
    p.add_argument("--max-steps", type=int, default=None, help="stop each run early (smoke tests)")
    p.add_argument("--n-cases", type=int, default=None, help="phantom cases (default: grid setting)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=float, default=None, help="ResNet width multiplier")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--skip-bad", action="store_true", help="cbis-ddsm/vindr-mammo: skip and count bad exams")
    p.add_argument("--csv", nargs="*", default=None, help="cbis-ddsm/vindr-mammo metadata CSVs")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel, one thread each (default: 2 on CPU with 2+ cores, 1 on a GPU)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    if a.jobs is None:
        a.jobs = 1 if a.device != "cpu" else min(2, os.cpu_count() or 1)
    settings = dict((FULL if a.full else QUICK)[a.dataset])
    for key in ("epochs", "n_cases", "image_size", "width"):
        if getattr(a, key) is not None:
            settings[key] = getattr(a, key)
    seeds = parse_seeds(a.seeds) if not (a.full and a.seeds == "3") else list(range(5))
    conditions = [c.strip() for c in a.conditions.split(",") if c.strip()]
    extra = {"skip_bad": a.skip_bad, **({"csv": a.csv} if a.csv else {})} if a.dataset in ("cbis-ddsm", "vindr-mammo") else {}
    base = TrainConfig(dataset=a.dataset, root=a.root, device=a.device, amp=a.amp, max_steps=a.max_steps,
                       extra=extra, **settings)
    run_root = Path(a.runs) / a.dataset
    if run_root.exists():
        shutil.rmtree(run_root)  # our own output from a previous grid: start fresh
    t0 = time.perf_counter()
    splits = build_data(base)
    t_data = time.perf_counter() - t0
    print(f"[reproduce] {a.dataset}: {len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test "
          f"in {t_data:.1f}s; {len(conditions)} conditions x {len(seeds)} seeds", flush=True)
    if a.dataset == "phantom":
        save_examples(splits, Path(a.out) / "phantom_examples.png")
    cfgs = [replace(base, condition=c, seed=k, out=str(run_root / f"{c}-seed{k}")) for c in conditions for k in seeds]
    run_dirs = [c.out for c in cfgs]
    results: list[dict] = []

    def done(r: dict) -> None:
        results.append(r)
        print(f"[reproduce] {r['condition']} seed {r['seed']}: test AUC {r['test_auc']:.3f} "
              f"({r['seconds_total']:.0f}s, {r['steps']} steps) [{len(results)}/{len(cfgs)}]", flush=True)

    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            for fut in as_completed([pool.submit(_run_one, c) for c in cfgs]):
                done(fut.result())
        order = {(c.condition, c.seed): i for i, c in enumerate(cfgs)}
        results.sort(key=lambda r: order[(r["condition"], r["seed"])])
    else:
        for c in cfgs:
            done(train(c, splits, progress=not a.no_progress))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df, md = summarise(results)
    df.to_csv(out / "results.csv", index=False)
    (out / "test_auc.md").write_text(md)
    print(md)
    if not a.no_report:
        from dynamics.cli import main as dynamics_cli
        args = ["report", *run_dirs, "--out", str(out), "--by", "condition"]
        if a.no_progress:
            args.append("--no-progress")
        rc = dynamics_cli(args)
        if rc:
            return int(rc)
    timing = {"dataset": a.dataset, "data_seconds": t_data, "total_seconds": time.perf_counter() - t0,
              "runs": len(results), "settings": settings, "seeds": seeds}
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print(f"[reproduce] done in {timing['total_seconds']:.0f}s; report in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
