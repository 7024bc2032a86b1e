"""DistributedDataParallel on CPU (gloo, two processes, file rendezvous, no network): rank 0 records the
averaged gradient once, measured after DDP has written it, and before clipping."""
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dynamics
from harness import fresh_model, make_batches

STEPS, CLIP = 3, 0.05


def _shards(step_batches):
    (x_cc, x_mlo, y), = step_batches
    half = len(y) // 2
    return [(x_cc[:half], x_mlo[:half], y[:half]), (x_cc[half:], x_mlo[half:], y[half:])]


def _worker(rank: int, store: str, out: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(fresh_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rec = dynamics.attach(model, optimizer, views={"cc": model.module.cc, "mlo": model.module.mlo}, out=out)
        assert isinstance(rec, dynamics.Recorder if rank == 0 else dynamics.InactiveRecorder)
        for batch in make_batches(STEPS):
            x_cc, x_mlo, y = _shards(batch)[rank]
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            optimizer.zero_grad()
            rec.log(loss=1.0)
        rec.close()
        dist.barrier()  # both ranks leave together: gloo aborts if one tears down while the other works
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo's threads have been seen to abort the process


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_records_the_averaged_unclipped_gradient_once(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "run")), nprocs=2, join=True)
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(STEPS)) and (per_step["clip_factor"] < 1).all()

    # brute force in this process: the gradient is the mean of the two shards' gradients
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for step, batch in enumerate(make_batches(STEPS)):
        grads = []
        for x_cc, x_mlo, y in _shards(batch):
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            grads.append(torch.autograd.grad(loss, list(model.parameters())))
        g = [(a.double() + b.double()) / 2 for a, b in zip(*grads)]
        for p, gi in zip(model.parameters(), g):
            p.grad = gi.float()
        before = [p.detach().double().clone() for p in model.parameters()]
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
        for name, gi, p, b in zip(names, g, model.parameters(), before):
            rows.append({"step": step, "param": name, "grad_sq_ref": float((gi ** 2).sum()),
                         "lca_ref": float((gi * (p.detach().double() - b)).sum())})
    merged = pd.DataFrame(rows).merge(per_param.astype({"param": str}).assign(
        param=lambda d: d["param"].str.removeprefix("module.")), on=["step", "param"])
    assert len(merged) == len(rows) == len(per_param)
    # (the bias before BatchNorm has a gradient of zero up to rounding: absolute tolerance for it)
    np.testing.assert_allclose(merged["grad_sq"], merged["grad_sq_ref"], rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(merged["lca"], merged["lca_ref"], rtol=1e-4, atol=1e-10)
