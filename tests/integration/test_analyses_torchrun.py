"""`torchrun` launches analyses/train.py as it is: two CPU processes (gloo, local rendezvous), the model in
DistributedDataParallel, the training set sharded, and one run directory, written by rank 0."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import dynamics

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, BATCH, PROCS, PROBE_EVERY = 1200, 128, 2, 2  # mfeat's training split; --batch-size is per process
STEPS = math.ceil(math.ceil(N_TRAIN / PROCS) / BATCH)  # one epoch over each process's half: 5 (one process: 10)


def _torchrun(out: Path, condition: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={PROCS}",
           "analyses/train.py", "--dataset", "mfeat", "--condition", condition, "--epochs", "1",
           "--batch-size", str(BATCH), "--hidden", "8", "--probe-every", str(PROBE_EVERY), "--out", str(out)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("condition", ["separate", "shared", "dropout"])
def test_torchrun_two_processes_record_one_run(tmp_path, condition):
    proc = _torchrun(tmp_path / "runs" / condition, condition)
    assert proc.stdout.count('"test_auc"') == 1  # only rank 0 prints its results

    runs = sorted(p.parent for p in tmp_path.rglob("meta.json"))
    assert runs == [tmp_path / "runs" / condition]
    run = runs[0]
    meta = dynamics.read_meta(run)
    assert not meta.get("errors"), meta.get("errors")  # recording did not stop on any step
    assert meta["config"]["world_size"] == PROCS and meta["config"]["global_batch_size"] == PROCS * BATCH

    per_param, per_step = dynamics.load(run)
    recorded = per_step.loc[per_step["recorded"], "step"].tolist()
    assert recorded == list(range(STEPS))  # each process trained on its shard, not on the whole set
    grad_sq = per_param.groupby("step")["grad_sq"].sum()
    assert grad_sq.index.tolist() == list(range(STEPS))
    assert np.isfinite(grad_sq).all() and (grad_sq > 0).all() and per_param["finite"].all()
    assert np.isfinite(per_param["lca"]).all()
    views = set(meta["config"]["mfeat_views"])
    assert views <= set(per_param["view"].astype(str))
    if condition == "shared":  # the shared body is split between the two views on every step
        shared = per_param[per_param["attributed"]]
        assert set(shared["view"].astype(str)) == views
        assert np.isfinite(shared.groupby(["step", "view"], observed=True)["grad_sq"].sum()).all()
        assert sorted(shared["step"].unique().tolist()) == list(range(STEPS))
    if condition == "dropout":
        assert per_step[[f"present_{v}" for v in sorted(views)]].notna().all().all()
    last = per_step[per_step["step"] == STEPS - 1].iloc[0]
    assert 0 <= last["test_auc"] <= 1 and 0 <= last["val_auc"] <= 1
    assert sorted(dynamics.load_probe(run)["step"].unique().tolist()) == list(range(0, STEPS, PROBE_EVERY))

    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == STEPS and results["world_size"] == PROCS
    assert (run / "utilization.json").exists() and (run / "best.pt").exists()
