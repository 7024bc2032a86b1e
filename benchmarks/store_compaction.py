"""Time the store on a long run: commit flushes of 100 steps x 138 tensors as the recorder does, then compact
them as ``close()`` does, then load. Prints the part files before and after, the times and the peak memory.

    .venv/bin/python benchmarks/store_compaction.py [--steps 234500] [--tensors 138] [--keep DIR]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import dynamics
from dynamics import store
from dynamics.schema import SCHEMA_VERSION


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=23_450)
    ap.add_argument("--tensors", type=int, default=138)
    ap.add_argument("--flush-every", type=int, default=100)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--no-load", action="store_true", help="skip loading (the tables of a long run are large)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dynamics-store-"))
    run = root / "run"
    n = args.tensors
    params = [{"name": f"t{i}", "view": "cc" if i % 2 else "mlo", "layer": f"l{i // 2}", "depth": i // 4,
               "numel": 1000, "group": 0} for i in range(n)]
    meta = {"schema_version": SCHEMA_VERSION, "status": "closed", "views": ["cc", "mlo", "shared"],
            "shared_name": "shared", "parameters": params}
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    writer = store.open_run(run, resume=False)
    writer.write_meta(meta)
    for start in range(0, args.steps, args.flush_every):
        st = np.arange(start, min(start + args.flush_every, args.steps), dtype=np.int64)
        k = len(st) * n
        writer.commit({
            "params": pd.DataFrame({"step": np.repeat(st, n),
                                    "param_id": np.tile(np.arange(n, dtype=np.int32), len(st)), "grad_sq": rng.random(k), "param_sq": rng.random(k), "update_sq": rng.random(k),
                                    "lca": rng.standard_normal(k), "finite": True, "has_grad": True}),
            "steps": pd.DataFrame({"step": st, "recorded": True, "skipped": False, "clip_factor": np.nan,
                                   "lr_0": 0.1, "loss": rng.random(len(st))})})
    written = time.perf_counter() - t0
    before = writer.files
    t0 = time.perf_counter()
    writer.close(meta)
    compacted = time.perf_counter() - t0
    peak_writing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = sum(1 for t in ("params", "steps") for _ in (run / t).iterdir())
    print(f"{args.steps} steps x {n} tensors ({args.steps * n:,} rows): {before} part files written in "
          f"{written:.1f} s; compacted at close into {after} files in {compacted:.1f} s (peak memory "
          f"{peak_writing:.0f} MiB)")
    if not args.no_load:
        t0 = time.perf_counter()
        dynamics.load(run)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"loaded in {time.perf_counter() - t0:.1f} s (peak memory {peak:.0f} MiB)")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
