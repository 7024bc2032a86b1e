"""Time `dynamics report` on a synthetic run of 10,000 steps x 100 tensors (issue 4: target < 30 s).

The run is written through the store's writer as the recorder writes it (100 committed flushes of 100 steps,
compacted at close; ``--uncompacted`` leaves the 100 flushes): two views of 24 layers (weight + bias) each
plus 4 shared tensors.
One step in 500 is marked skipped (AMP-style) to exercise the exclusions. Then the console script
runs as a user would run it, and its wall-clock time is printed.

    .venv/bin/python benchmarks/report_speed.py [--steps 10000] [--keep DIR] [--uncompacted]
"""
from __future__ import annotations

import argparse
import os
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


def make_run(run_dir: Path, steps: int, layers_per_view: int = 24, seed: int = 0, compact: bool = True) -> int:
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
            "shared_name": "shared", "parameters": params, "condition": "baseline", "seed": seed,
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
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="write the run and report here instead of a temporary folder")
    ap.add_argument("--uncompacted", action="store_true", help="leave the 100 flushes as written (no compaction)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dynamics-bench-"))
    run_dir = root / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    n = make_run(run_dir, args.steps, compact=not args.uncompacted)
    print(f"wrote {args.steps} steps x {n} tensors in {time.perf_counter() - t0:.1f} s: {run_dir}")
    exe = Path(sys.executable).with_name("dynamics")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "dynamics"]),
           "report", str(run_dir), "--out", str(root / "report"), "--no-progress"]
    t0, cpu0 = time.perf_counter(), os.times()
    subprocess.run(cmd, check=True)
    elapsed, cpu1 = time.perf_counter() - t0, os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    print(f"`{' '.join(cmd[-5:])}`: {elapsed:.1f} s wall clock (target < 30 s), {cpu:.1f} s CPU "
          f"(the figure to compare on a shared machine)")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
