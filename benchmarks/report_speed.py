"""Time `dynamics report` on a synthetic run of 10,000 steps x 100 tensors (target < 15 s), or with
``--sweep`` on 200 runs of 2,000 steps x 140 tensors (issue 16: targets < 60 s and < 4 GB).

Each run is written through the store's writer as the recorder writes it (committed flushes of 100 steps,
compacted at close; ``--uncompacted`` leaves the flushes): two views of 24 layers (34 in a sweep; weight + bias)
each plus 4 shared tensors; a sweep's runs are 4 conditions x 50 seeds.
One step in 500 is marked skipped (AMP-style) to exercise the exclusions. Then the console script
runs as a user would run it, and its wall-clock time, CPU time and peak memory (the child's maximum resident set
size) are printed.

    .venv/bin/python benchmarks/report_speed.py [--steps 10000] [--keep DIR] [--uncompacted]
    .venv/bin/python benchmarks/report_speed.py --sweep [--runs 200] [--steps 2000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics import store
from dynamics.schema import SCHEMA_VERSION


def make_run(run_dir: Path, steps: int, layers_per_view: int = 24, seed: int = 0, compact: bool = True,
             condition: str = "baseline") -> int:
    rng = np.random.default_rng(seed)
    params = []
    for view, scale in (("cc", 2.0), ("mlo", 1.0)):
        for d in range(layers_per_view):
            for kind, numel in (("weight", 4096), ("bias", 64)):
                params.append({"name": f"{view}.l{d}.{kind}", "view": view, "layer": f"{view}.l{d}", "depth": d,
                               "numel": numel, "group": 0, "_scale": scale})
    for kind, numel in (("weight", 512), ("bias", 1), ("w2", 256), ("b2", 1)):
        params.append({"name": f"head.{kind}", "view": "shared", "layer": "head", "depth": 0, "numel": numel,
                       "group": 0, "_scale": 1.5})
    scales = np.array([p.pop("_scale") for p in params])
    n = len(params)
    writer = store.open_run(run_dir, resume=False)
    meta = {"schema_version": SCHEMA_VERSION, "status": "finished", "views": ["cc", "mlo", "shared"],
            "shared_name": "shared", "parameters": params, "condition": condition, "seed": seed,
            "config": {"lr": 0.1}, "model": "synthetic", "optimizer": {"class": "SGD"},
            "created": "2026-01-01T00:00:00+00:00", "versions": {}}
    writer.write_meta(meta)
    chunk = 100
    for start in range(0, steps, chunk):
        st = np.arange(start, min(start + chunk, steps))
        decay = np.exp(-st / steps)[:, None]
        g = (scales[None, :] ** 2) * decay * rng.lognormal(0, 0.3, (st.size, n))
        u = 0.01 * g * rng.lognormal(0, 0.2, (st.size, n))
        frame = pd.DataFrame({
            "step": np.repeat(st, n).astype("int64"), "param_id": np.tile(np.arange(n), st.size).astype("int32"),
            "grad_sq": g.ravel(), "param_sq": np.tile(np.full(n, 10.0), st.size),
            "update_sq": u.ravel(), "lca": -np.sqrt(g * u).ravel(),
            "finite": True, "has_grad": True})
        writer.commit({"params": frame, "steps": pd.DataFrame({
            "step": st.astype("int64"), "recorded": True, "skipped": st % 500 == 499, "clip_factor": np.nan,
            "lr_0": 0.1, "loss": 2.0 * np.exp(-st / steps)})})
    if compact:
        writer.close(meta)
    else:
        writer.write_meta(meta)
        writer.release()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="steps per run (default 10,000; 2,000 with --sweep)")
    ap.add_argument("--sweep", action="store_true", help="200 runs of 140 tensors (--runs) instead of one run")
    ap.add_argument("--runs", type=int, default=200, help="runs of the sweep")
    ap.add_argument("--keep", type=Path, help="write the runs and report here instead of a temporary folder "
                                              "(runs already there are reused)")
    ap.add_argument("--uncompacted", action="store_true", help="leave the flushes as written (no compaction)")
    args = ap.parse_args()
    steps = args.steps or (2_000 if args.sweep else 10_000)
    root = args.keep or Path(tempfile.mkdtemp(prefix="dynamics-bench-"))
    runs = [root / "runs" / f"c{i % 4}-s{i // 4}" for i in range(args.runs)] if args.sweep else [root / "run"]
    t0 = time.perf_counter()
    for i, run_dir in enumerate(runs):
        if run_dir.exists() and not (args.sweep and args.keep):
            shutil.rmtree(run_dir)
        if not run_dir.exists():
            make_run(run_dir, steps, layers_per_view=34 if args.sweep else 24, seed=i // 4,
                         compact=not args.uncompacted, condition=f"c{i % 4}" if args.sweep else "baseline")
    n = len(store.read_meta(runs[0])["parameters"])
    print(f"{len(runs)} run(s) of {steps} steps x {n} tensors ready in {time.perf_counter() - t0:.1f} s: {root}")
    exe = Path(sys.executable).with_name("dynamics")
    target = f"{len(runs)} runs" if args.sweep else "run"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "dynamics"]),
           "report", *(str(r) for r in runs), "--out", str(root / "report"), "--no-progress"]
    t0, cpu0 = time.perf_counter(), os.times()
    subprocess.run(cmd, check=True)
    elapsed, cpu1 = time.perf_counter() - t0, os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    goal = "< 60 s, < 4 GB" if args.sweep else "< 15 s"
    print(f"`dynamics report <{target}> --out ... --no-progress`: {elapsed:.1f} s wall clock, {cpu:.1f} s CPU "
          f"(the figure to compare on a shared machine), peak memory {peak:.2f} GiB (target {goal})")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
