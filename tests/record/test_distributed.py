"""Four CPU processes (gloo, file rendezvous, no network) under DistributedDataParallel and fully_shard (FSDP2,
and HSDP: two replicas of two shards).

Every record is checked against a single-process run on the concatenated batch: the brute-force reference of
``harness.train`` (float64 from cloned tensors) and, for the attribution, a single-process dynamics record
(itself checked against a detached-backward reference in test_attribution.py). The models have no BatchNorm,
so four quarter batches give the gradient of the whole batch. All scenarios run in one group of processes.
"""
import contextlib
from dataclasses import dataclass
import os
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dynamics
from tests.harness import Setup, SharedModel, _inputs, assert_matches_reference, make_batches, train

STEPS, CLIP, WORLD, TIMEOUT_S = 3, 0.05, 4, 240
QUANTITIES = ["grad_sq", "param_sq", "update_sq", "lca"]


def _model(seed: int = 0) -> nn.Module:
    """The harness's two-view model without its BatchNorm (a half batch's statistics differ from the whole's)."""
    from tests.harness import TwoView
    torch.manual_seed(seed)
    model = TwoView()
    model.cc[1] = nn.Identity()
    return model


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


def _adamw(m):
    return torch.optim.AdamW(m.parameters(), lr=1e-2)


@dataclass(frozen=True)
class Scenario:
    """A training set-up, how the model is spread over the processes, and how it is recorded."""

    setup: Setup
    mesh: tuple[int, ...] | None = None   # None: DDP; else fully_shard over a device mesh of this shape
    steps: int = STEPS
    every: int = 1
    resume_at: int | None = None          # close the recorder before this step and attach again (resume=True)

    def recorded_steps(self) -> list[int]:
        return list(range(0, self.steps, self.every))


SCENARIOS = {
    "ddp_clip": Scenario(Setup("ddp_clip", _sgd, clip=CLIP)),
    "ddp_accumulate": Scenario(Setup("ddp_accumulate", _adamw, micro=2)),
    "fsdp_clip": Scenario(Setup("fsdp_clip", _adamw, clip=CLIP), mesh=(WORLD,)),
    "fsdp_accumulate": Scenario(Setup("fsdp_accumulate", _sgd, micro=2), mesh=(WORLD,)),
    "hsdp_clip": Scenario(Setup("hsdp_clip", _adamw, clip=CLIP), mesh=(2, WORLD // 2)),
    # every rank must agree with rank 0 on the step it resumes at, or their collectives would not pair up
    "fsdp_resume_every_2": Scenario(Setup("fsdp_resume", _sgd, clip=CLIP), mesh=(WORLD,), steps=6, every=2,
                                    resume_at=3),
}


def _part(batch: tuple, rank: int, world: int = WORLD, device: str = "cpu") -> tuple:
    """This process's slice of the batch."""
    return tuple(t.chunk(world)[rank].to(device) for t in batch)


def _wrap(mesh_shape: tuple[int, ...] | None, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the model the loop calls, the module whose submodules name the views)."""
    if mesh_shape is None:
        wrapped = nn.parallel.DistributedDataParallel(model)
        return wrapped, wrapped.module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    names = ("replicate", "shard")[-len(mesh_shape):]  # two dimensions: HSDP
    mesh = init_device_mesh(next(model.parameters()).device.type, mesh_shape, mesh_dim_names=names)
    for column in (model.cc, model.mlo):
        fully_shard(column, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, model


def _sync(model: nn.Module, last: bool):
    """Gradient synchronisation only on the last micro-batch: DDP's no_sync, FSDP's requires_gradient_sync."""
    if hasattr(model, "no_sync"):
        return contextlib.nullcontext() if last else model.no_sync()
    model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _train_spread(scenario: Scenario, rank: int, out: str, world: int = WORLD, device: str = "cpu") -> None:
    """The harness's loop on this process's part of each batch, recorded."""
    setup = scenario.setup
    model, inner = _wrap(scenario.mesh, _model().to(device))
    optimizer = setup.make_optimizer(model)

    def attach(resume: bool):
        rec = dynamics.attach(model, optimizer, views={"cc": inner.cc, "mlo": inner.mlo}, out=out,
                              every=scenario.every, resume=resume)
        expected = dynamics.InactiveRecorder if (scenario.mesh is None and rank) else dynamics.Recorder
        assert isinstance(rec, expected), (setup.name, rank, type(rec))
        return rec

    rec = attach(resume=False)
    for step, micro_batches in enumerate(make_batches(scenario.steps, setup.micro)):
        if step == scenario.resume_at:
            rec.close()
            rec = attach(resume=True)
        for i, batch in enumerate(micro_batches):
            x_cc, x_mlo, y = _part(batch, rank, world, device)
            with _sync(model, i == len(micro_batches) - 1):
                (((model(x_cc, x_mlo) - y) ** 2).mean() / len(micro_batches)).backward()
        if setup.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
        optimizer.step()
        optimizer.zero_grad()
    rec.close()


def _attribution_data():
    g = torch.Generator().manual_seed(1)
    return [(_inputs("attention", 8, g), _inputs("attention", 8, g), torch.randn(8, generator=g))
            for _ in range(STEPS)]


def _train_attributed(out: str, rank: int | None) -> None:
    """The shared-column model with per-call attribution; ``rank`` None is the single-process reference."""
    torch.manual_seed(0)
    inner = SharedModel("attention")
    model = inner if rank is None else nn.parallel.DistributedDataParallel(inner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={inner.column: ["cc", "mlo"]}, out=out)
    for batch in _attribution_data():
        x_cc, x_mlo, y = batch if rank is None else _part(batch, rank)
        ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
    rec.close()


def _refusals(rank: int, out: str) -> None:
    """Set-ups that cannot be recorded right are refused on every rank, and no process is left waiting."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = SharedModel("attention")
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NotImplementedError, match="attribution"):
        dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]}, out=out)
    partial = _model()
    fully_shard(partial.cc, mesh=init_device_mesh("cpu", (WORLD,)))
    with pytest.raises(NotImplementedError, match="'mlo.0.weight', are not"):
        dynamics.attach(partial, torch.optim.SGD(partial.parameters(), lr=0.1),
                        views={"cc": partial.cc, "mlo": partial.mlo}, out=out + "_partial")
    # rank 0 cannot open the run (it exists): the other ranks hear why instead of waiting for it
    plain = _model()
    fully_shard(plain, mesh=init_device_mesh("cpu", (WORLD,)))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "meta.json"), "w") as f:
        f.write("{}")
    with pytest.raises((dynamics.RunStoreError, RuntimeError), match="rank 0 could not open" if rank else "exists"):
        dynamics.attach(plain, opt, views={"cc": plain.cc, "mlo": plain.mlo}, out=out)
    with open(os.path.join(out, f"refused_on_rank_{rank}"), "w") as f:
        f.write("every refusal raised")


def _worker(rank: int, store: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for name, scenario in SCENARIOS.items():
            _train_spread(scenario, rank, os.path.join(root, name))
        _train_attributed(os.path.join(root, "ddp_attribution"), rank)
        _refusals(rank, os.path.join(root, "refused"))
        dist.barrier()  # both ranks leave together: gloo aborts if one tears down while the other works
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo's threads have been seen to abort the process


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """Run every scenario once in WORLD processes, bounded in time; the run directories' root."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    root = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(_worker, args=(str(root / "store"), str(root)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the distributed scenarios did not finish within {TIMEOUT_S} s")
    return root


def _reference(scenario: Scenario) -> pd.DataFrame:
    rows = train(_model(), scenario.setup, make_batches(scenario.steps, scenario.setup.micro))
    return rows[rows["step"].isin(scenario.recorded_steps())]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_record_equals_the_single_process_reference(distributed_runs, name):
    scenario = SCENARIOS[name]
    per_param, per_step = dynamics.load(distributed_runs / name)
    reference = _reference(scenario)
    got = per_param.astype({"param": str}).assign(param=lambda d: d["param"].str.removeprefix("module."))
    assert per_step["step"].tolist() == scenario.recorded_steps()
    assert not dynamics.read_meta(distributed_runs / name).get("errors")
    assert_matches_reference(got, reference, QUANTITIES, rtol=1e-5, atol_of_max=1e-9)
    if scenario.setup.clip is not None:
        assert (per_step["clip_factor"] < 1).all()


def test_parameter_names_are_the_models_own(distributed_runs):
    names = {n for n, _ in _model().named_parameters()}
    assert set(dynamics.load(distributed_runs / "fsdp_clip")[0]["param"].astype(str)) == names
    assert {n.removeprefix("module.") for n in dynamics.load(distributed_runs / "ddp_clip")[0]["param"].astype(str)} == names


def test_ddp_attribution_equals_the_single_process_attribution(distributed_runs, tmp_path):
    _train_attributed(str(tmp_path / "single"), None)
    single, _ = dynamics.load(tmp_path / "single")
    got, _ = dynamics.load(distributed_runs / "ddp_attribution")
    got = got.astype({"param": str, "view": str}).assign(param=lambda d: d["param"].str.removeprefix("module."))
    merged = single.astype({"param": str, "view": str}).merge(got, on=["step", "param", "view"], suffixes=("_ref", ""))
    assert len(merged) == len(single) == len(got) and merged["attributed"].any()
    for column in ["grad_sq", "lca", "cross"]:
        ref = merged[f"{column}_ref"].astype(float)
        # per-process parts averaged vs one process: float32 sums in another order (as in test_attribution)
        np.testing.assert_allclose(merged[column].astype(float), ref, rtol=1e-4,
                                   atol=1e-6 * np.nanmax(np.abs(ref)), err_msg=column)
    meta = dynamics.read_meta(distributed_runs / "ddp_attribution")
    assert not meta["notes"] and not meta.get("errors")


def _cuda_fsdp_worker(rank: int, store: str, out: str) -> None:
    """One process, NCCL, fully_shard on the GPU, every recorder hook in sync-debug "error" mode."""
    from tests.cuda_strict import make_hooks_strict
    make_hooks_strict()
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        _train_spread(Scenario(SCENARIOS["fsdp_clip"].setup, mesh=(1,)), 0, out, world=1, device="cuda")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs CUDA and NCCL")
def test_fsdp_on_cuda_without_host_synchronisation(tmp_path):
    mp.start_processes(_cuda_fsdp_worker, args=(str(tmp_path / "store"), str(tmp_path / "run")), nprocs=1,
                       start_method="spawn")
    assert not dynamics.read_meta(tmp_path / "run").get("errors")
    per_param, _ = dynamics.load(tmp_path / "run")
    reference = train(_model().cuda(), SCENARIOS["fsdp_clip"].setup, make_batches(STEPS))
    assert_matches_reference(per_param, reference, QUANTITIES, rtol=1e-4, atol_of_max=1e-7)


def test_refusals_reached_every_rank(distributed_runs):
    # each rank writes its marker only after each of its refusals raised as expected
    assert sorted(p.name for p in (distributed_runs / "refused").glob("refused_on_rank_*")) == [
        f"refused_on_rank_{r}" for r in range(WORLD)]
