"""Train one model under one named condition (``analyses.conditions``) and record its per-view dynamics.

A plain loop: AdamW, linear warm-up then cosine decay per step, optional AMP (bfloat16 autocast on CPU,
float16 with a GradScaler on CUDA). Per epoch, validation ROC AUC and accuracy are logged into the run
right after the epoch's last optimizer step; in the dropout condition the number of samples in which each
view was present is logged at every step (by ``dynamics.balance.ModalityDropout``, inside the model). The best-validation checkpoint is saved with ``torch.save`` and
reloaded with ``weights_only=True`` for the test set; test metrics and each view's utilization go into
``results.json`` and ``utilization.*`` in the run directory.

    python -m analyses.train --dataset phantom --condition shared --seed 0 --out runs/phantom/shared-0

Launched by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set), the same command trains with
DistributedDataParallel: one process per device (gloo on CPU, nccl on CUDA, ``cuda:LOCAL_RANK``), every
process calls ``dynamics.attach`` with the same arguments, the training set is sharded with a
``DistributedSampler`` (``--batch-size`` is per process, so the effective batch is ``WORLD_SIZE`` times it),
and rank 0 alone evaluates and writes: the one run directory, the checkpoint, ``results.json`` and
``utilization.*``. Without torchrun nothing of this happens and a run is exactly the single-process one.

    torchrun --standalone --nproc-per-node=2 analyses/train.py --dataset phantom --condition shared --out runs/ddp
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a file (torchrun analyses/train.py): make `analyses` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dynamics
from dynamics.analysis.metrics import accuracy, roc_auc

from analyses.conditions import Condition, parse_condition
from analyses.datasets.common import TwoViewData, TwoViewSplits
from analyses.distributed import Distributed, init_distributed
from analyses.outcomes import run_dynamics, write_utilization
from analyses.linear_probe import probe_columns
from analyses.models import TwoViewModel, mlp_model, nyu_model

DATASETS = ("phantom", "phantom-v3", "digits", "mfeat", "cbis-ddsm", "vindr-mammo")
PHANTOMS = {"phantom": "v2", "phantom-v3": "v3"}  # data set name → phantom variant


@dataclass
class TrainConfig:
    """One training run. Image options apply to phantom/cbis-ddsm/vindr-mammo, ``hidden`` to mfeat."""

    dataset: str = "phantom"
    condition: str = "separate"
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 20
    width: float = 1.0
    image_size: int = 64
    n_cases: int = 3000                   # phantom: train + validation cases (with n_test: beside the test split)
    n_test: int = 0                       # phantom: test cases apart (0: n_cases split 60/20/20 as before)
    difficulty: float = 0.5
    hidden: int = 64
    p_drop: float = 0.25
    amp: bool = False
    device: str = "cpu"
    root: str = "data"
    out: str = "runs/run"
    max_steps: int | None = None          # stop early (smoke tests)
    probe_every: int = 50                 # higher-order LCA on a fixed training batch every n steps (0: off)
    mfeat_views: tuple[str, str] = ("fou", "mor")
    rebalance_windows: int | None = None  # rebalance-random: the guided run's window count (its dose)
    data_seed: int | None = None          # the data's own seed (phantom cases, split, digits colours); None: seed
    extra: dict = field(default_factory=dict)  # data-set specific options (csv paths, skip_bad, ...)

    @property
    def data_key(self) -> int:
        """The seed the data and split are drawn with: ``data_seed``, or the run's seed (each seed its data)."""
        return self.seed if self.data_seed is None else self.data_seed


def config_key(cfg: TrainConfig) -> str:
    """A hash of everything that determines a run's result (not where it is written or on which device): a
    finished run is reused by a resumed grid only when its key is the same."""
    import hashlib
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "root")}
    if cfg.dataset in PHANTOMS:  # the variant's parameters make the images: a retuned variant is another run
        from analyses.datasets.phantom import VARIANTS, VERSION
        fields["phantom"] = {"version": VERSION, **VARIANTS[PHANTOMS[cfg.dataset]]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_data(cfg: TrainConfig) -> TwoViewSplits:
    """The splits of ``cfg.dataset`` (imports lazily: only the chosen data set's dependencies are needed)."""
    if cfg.dataset in PHANTOMS:
        from analyses.datasets import phantom
        n, fractions = (phantom.split_sizes(cfg.n_cases, cfg.n_test) if cfg.n_test else
                        (cfg.n_cases, (0.6, 0.2, 0.2)))
        pc = phantom.variant(PHANTOMS[cfg.dataset], n=n, size=cfg.image_size, difficulty=cfg.difficulty,
                             seed=cfg.data_key)
        return phantom.load(pc, root=cfg.root, fractions=fractions)
    if cfg.dataset == "digits":
        from analyses.datasets import digits
        return digits.load(digits.DigitsConfig(**{"seed": cfg.data_key, **cfg.extra}))
    if cfg.dataset == "mfeat":
        from analyses.datasets import mfeat
        return mfeat.load(tuple(cfg.mfeat_views), seed=cfg.data_key)
    if cfg.dataset in ("cbis-ddsm", "vindr-mammo"):
        from analyses.datasets import mammo_metadata
        return mammo_metadata.load_splits(cfg.dataset, cfg.root, size=cfg.image_size, **cfg.extra)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose from {DATASETS}")


def build_model(cond: Condition, cfg: TrainConfig, splits: TwoViewSplits) -> TwoViewModel:
    """NYU ResNet-22 columns for images, MLP columns for feature vectors, for the views ``cond`` reads."""
    first = splits.train.views[splits.view_names[0]]
    if first.dim() == 4:
        return nyu_model(cond.architecture, cond.views, width=cfg.width, p_drop=cond.p_drop)
    dims = {v: splits.train.views[v].shape[1] for v in cond.views}
    return mlp_model(cond.architecture, dims, hidden=cfg.hidden, p_drop=cond.p_drop)


def recorder_views(model: TwoViewModel) -> tuple[dict, dict, str]:
    """``views`` and extra ``attach`` keywords for the model's condition, and how ``shared`` is attributed.

    ``shared`` splits the shared column's gradient between the views by call order (``attribute=``); per-view
    stems (mfeat) own their parameters outright.
    """
    if model.condition != "shared":
        return {"views": {v: getattr(model, f"{v}_column") for v in model.views}}, {}, "columns"
    stems = {v: getattr(model, f"{v}_stem") for v in model.views if hasattr(model, f"{v}_stem")}
    views = dict(stems) if stems else list(model.views)
    return {"views": views}, {"attribute": {model.column: list(model.views)}}, "attributed"


def predict(model: TwoViewModel, data: TwoViewData, device: str, batch_size: int = 256) -> torch.Tensor:
    """The model's logit for every sample of ``data``, in order (evaluation mode, on the host)."""
    model.eval()
    scores = []
    with torch.no_grad():
        for inputs, _ in data.batches(batch_size, device=device):
            scores.append(model(inputs).float().cpu())
    return torch.cat(scores)


def scores_metrics(data: TwoViewData, scores: torch.Tensor) -> tuple[float, float]:
    """ROC AUC and accuracy (threshold 0 on the logit) of ``scores`` against ``data``'s labels."""
    s, y = scores.numpy(), data.y.numpy()
    return roc_auc(y, s), accuracy(y, (s > 0).astype(float))


def evaluate(model: TwoViewModel, data: TwoViewData, device: str, batch_size: int = 256) -> tuple[float, float]:
    """ROC AUC and accuracy of ``model`` on ``data``."""
    return scores_metrics(data, predict(model, data, device, batch_size))


def rebalancing(cond: Condition, net: TwoViewModel, opt: torch.optim.Optimizer, warmup: int, seed: int,
                windows: int | None = None, horizon: int | None = None):
    """The re-balancing intervention of ``cond`` on the head's input (a no-op context for other conditions).

    The authors' settings: the speeds are read at every regular step, a window lasts 5 steps, the threshold is
    0.01 on log10 of the ratio (``cond.threshold``), and the first decision comes at the second epoch
    (``warmup``). ``windows``/``horizon``: the random control dose-matched to a guided run."""
    if cond.rebalance is None:
        return contextlib.nullcontext()
    from dynamics.balance import rebalance
    branches = {v: getattr(net, f"{v}_column") for v in net.views}
    matched = dict(windows=windows, horizon=horizon) if cond.rebalance == "random" and windows is not None else {}
    return rebalance(net.head, opt, branches, threshold=cond.threshold, every=1, steps=5, warmup=warmup,
                     mode=cond.rebalance, seed=seed, **matched)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), y)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _improved(val_auc: float, best_auc: float | None) -> bool:
    """Whether this epoch's model replaces the best checkpoint: always on the first evaluation (so a checkpoint
    exists even if the validation AUC is NaN, e.g. one class in the validation set), then when the AUC is larger;
    NaN counts as worse than any number."""
    if best_auc is None:
        return True
    if math.isnan(val_auc):
        return False
    return math.isnan(best_auc) or val_auc > best_auc


def train(cfg: TrainConfig, splits: TwoViewSplits | None = None, progress: bool = True) -> dict:
    """Train, record and evaluate one run; returns the results that are also written to ``results.json``.

    Under torchrun (see the module docstring) every process trains its shard and rank 0 returns and writes
    the results; the other ranks return ``{"rank": r, "world_size": n, "steps": k}``.
    """
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    ddp = init_distributed(cfg.device)  # without torchrun: rank 0 of 1 on cfg.device, no group to destroy
    try:
        return _train(replace(cfg, device=ddp.device), splits, progress and ddp.rank == 0, ddp)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train_epoch(model: torch.nn.Module, batches, opt: torch.optim.Optimizer, sched, scaler, rec,
                 cfg: TrainConfig, amp_dtype: torch.dtype, step: int, total: int, bar) -> int:
    """One epoch of optimizer steps (stopping at ``total``); returns the step count after it."""
    for inputs, y in batches:
        with torch.autocast(device_type=cfg.device.split(":")[0], dtype=amp_dtype, enabled=cfg.amp):
            loss = _loss(model(inputs), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        rec.log(loss=loss.detach())  # the dropout module logs its present-view counts itself
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step >= total:
            break
    return step


def _test_and_dose(cfg: TrainConfig, splits: TwoViewSplits, test_scores: torch.Tensor, cond: Condition,
                   balancer, ddp: Distributed) -> dict:
    """The results that describe the test set (scores, labels, sizes), the settings' key, re-balancing's dose
    (windows opened, steps re-balanced) and the process layout."""
    out = {"test_scores": test_scores.tolist(), "test_y": splits.test.y.int().tolist(), "data_seed": cfg.data_key,
           "config_key": config_key(cfg), "n_test": len(splits.test), "n_pos_test": int(splits.test.y.sum())}
    if cond.rebalance is not None:
        out["rebalance"] = {"windows": balancer.windows, "steps": len(balancer.schedule),
                            "threshold": cond.threshold, "mode": cond.rebalance}
    if ddp.on:
        out.update(world_size=ddp.world_size, global_batch_size=ddp.world_size * cfg.batch_size)
    return out


def _train(cfg: TrainConfig, splits: TwoViewSplits | None, progress: bool, ddp: Distributed) -> dict:
    t0 = time.perf_counter()
    splits = splits or build_data(cfg)
    cond = parse_condition(cfg.condition, splits.view_names, cfg.p_drop)
    torch.manual_seed(cfg.seed)
    net = build_model(cond, cfg, splits).to(cfg.device)   # the TwoViewModel: evaluated, checkpointed, views named on it
    model: torch.nn.Module = net                     # what trains and is recorded: net, or net wrapped in DDP
    sampler = None
    per_process = len(splits.train)
    if ddp.on:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.device(cfg.device).index] if cfg.device.startswith("cuda") else None)
        torch.manual_seed(cfg.seed + 1_000_003 * (ddp.rank + 1))  # own noise/dropout stream per process
        sampler = torch.utils.data.DistributedSampler(range(len(splits.train)), num_replicas=ddp.world_size,
                                                      rank=ddp.rank, shuffle=True, seed=cfg.seed)
        per_process = sampler.num_samples
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-per_process // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, cfg.warmup_steps))
    use_cuda_amp = cfg.amp and cfg.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_cuda_amp else None
    amp_dtype = torch.float16 if use_cuda_amp else torch.bfloat16
    view_kw, attach_kw, attribution = recorder_views(net)
    run_dir = Path(cfg.out)
    config = {**asdict(cfg), "attribution": attribution, "data": splits.info, "n_train": len(splits.train),
              "data_seed": cfg.data_key, "split_seed": splits.info.get("seed", cfg.data_key),
              "view_order": list(net.views)}
    if ddp.on:
        config.update(world_size=ddp.world_size, global_batch_size=ddp.world_size * cfg.batch_size)
    writer = ddp.rank == 0
    gen = torch.Generator().manual_seed(cfg.seed)
    best_auc, step, history = None, 0, []
    ckpt = run_dir / "best.pt"
    if cfg.probe_every > 0:
        inputs, y = next(splits.train.batches(cfg.batch_size, device=cfg.device))
        attach_kw["probe"] = dynamics.ProbeBatch(inputs=(inputs,), targets=y, loss_fn=_loss)
        attach_kw["probe_every"] = cfg.probe_every
    with dynamics.attach(model, opt, out=run_dir, config=config, seed=cfg.seed, condition=cfg.condition,
                         scaler=scaler, **view_kw, **attach_kw) as rec, \
            rebalancing(cond, net, opt, warmup=steps_per_epoch, seed=cfg.seed, windows=cfg.rebalance_windows,
                        horizon=total) as balancer:
        bar = tqdm(total=total, desc=f"{cfg.dataset}/{cfg.condition}/seed{cfg.seed}", disable=not progress or None,
                   leave=False)
        for epoch in range(cfg.epochs):
            model.train()
            order = None
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = torch.tensor(list(sampler))
            batches = splits.train.batches(cfg.batch_size, shuffle=True, generator=gen, device=cfg.device, order=order)
            step = _train_epoch(model, batches, opt, sched, scaler, rec, cfg, amp_dtype, step, total, bar)
            if writer:  # rank 0 evaluates net itself (no DDP forward, so no collective the others miss)
                val_auc, val_acc = evaluate(net, splits.val, cfg.device)
                rec.log(val_auc=val_auc, val_acc=val_acc)  # attaches to the epoch's last optimizer step
                history.append({"epoch": epoch, "step": step, "val_auc": val_auc, "val_acc": val_acc})
                if _improved(val_auc, best_auc):
                    best_auc = val_auc
                    torch.save(net.state_dict(), ckpt)
                bar.set_postfix(val_auc=f"{val_auc:.3f}")
            if step >= total:
                break
        bar.close()
        if writer:
            net.load_state_dict(torch.load(ckpt, weights_only=True, map_location=cfg.device))
            test_scores = predict(net, splits.test, cfg.device)
            test_auc, test_acc = scores_metrics(splits.test, test_scores)
            rec.log(test_auc=test_auc, test_acc=test_acc)  # best-validation checkpoint; on the last step
    if not writer:
        dist.barrier()  # wait for rank 0's evaluation and files before the process group goes
        return {"rank": ddp.rank, "world_size": ddp.world_size, "steps": step}
    results = {"dataset": cfg.dataset, "condition": cfg.condition, "seed": cfg.seed, "test_auc": test_auc,
               "test_acc": test_acc, "best_val_auc": best_auc, "steps": step, "history": history,
               "attribution": attribution, "views": list(net.views), "seconds_train": time.perf_counter() - t0,
               **_test_and_dose(cfg, splits, test_scores, cond, balancer, ddp)}
    try:
        results["dynamics"] = run_dynamics(run_dir, net)
        results["utilization"] = write_utilization(net, splits, run_dir, cfg.device)
        results["probe_auc"] = probe_columns(net, splits, cfg.device)
        results["seconds_total"] = time.perf_counter() - t0
        (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    finally:
        if ddp.on:
            dist.barrier()
    return results


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    for name, value in asdict(d).items():
        if name in ("extra", "mfeat_views", "data_seed"):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            kind = int if name in ("max_steps", "rebalance_windows") else type(value)
            p.add_argument(flag, type=kind, default=value)
    p.add_argument("--mfeat-views", nargs=2, default=list(d.mfeat_views))
    p.add_argument("--data-seed", type=int, default=None, help="the data's seed (default: --seed)")
    p.add_argument("--skip-bad", action="store_true", help="cbis-ddsm/vindr-mammo: skip and count bad exams")
    p.add_argument("--csv", nargs="*", default=None, help="cbis-ddsm/vindr-mammo metadata CSVs")
    args = vars(p.parse_args(argv))
    args["mfeat_views"] = tuple(args["mfeat_views"])
    skip_bad, csv = args.pop("skip_bad"), args.pop("csv")
    if args["dataset"] in ("cbis-ddsm", "vindr-mammo"):
        args["extra"] = {"skip_bad": skip_bad, **({"csv": csv} if csv else {})}
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> None:
    res = train(parse_args(argv))
    if "test_auc" in res:  # rank 0 (or the only process)
        print(json.dumps({k: v for k, v in res.items() if k not in ("history", "test_scores")}, indent=1, default=float))


if __name__ == "__main__":
    main()
