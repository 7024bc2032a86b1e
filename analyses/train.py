"""Train one two-view model under one condition and record its per-view dynamics with ``dynamics.attach``.

A plain loop: AdamW, linear warm-up then cosine decay per step, optional AMP (bfloat16 autocast on CPU,
float16 with a GradScaler on CUDA). Per epoch, validation ROC AUC and accuracy are logged into the run
right after the epoch's last optimizer step; in the dropout condition the number of samples in which each
view was present is logged at every step. The best-validation checkpoint is saved with ``torch.save`` and
reloaded with ``weights_only=True`` for the test set; test metrics and each view's utilization go into
``results.json`` and ``utilization.*`` in the run directory.

    python -m analyses.train --dataset phantom --condition shared --seed 0 --out runs/phantom/shared-0
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import dynamics
from dynamics.metrics import accuracy, roc_auc

from analyses.datasets.common import TwoViewData, TwoViewSplits
from analyses.models import CONDITIONS, TwoViewModel, mlp_model, nyu_model

DATASETS = ("phantom", "mfeat", "cbis-ddsm", "vindr-mammo")


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
    n_cases: int = 3000
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
    extra: dict = field(default_factory=dict)  # data-set specific options (csv paths, skip_bad, ...)


def build_data(cfg: TrainConfig) -> TwoViewSplits:
    """The splits of ``cfg.dataset`` (imports lazily: only the chosen data set's dependencies are needed)."""
    if cfg.dataset == "phantom":
        from analyses.datasets import phantom
        pc = phantom.PhantomConfig(n=cfg.n_cases, size=cfg.image_size, difficulty=cfg.difficulty)
        return phantom.load(pc, root=cfg.root)
    if cfg.dataset == "mfeat":
        from analyses.datasets import mfeat
        return mfeat.load(tuple(cfg.mfeat_views))
    if cfg.dataset in ("cbis-ddsm", "vindr-mammo"):
        from analyses.datasets import mammo_metadata
        return mammo_metadata.load_splits(cfg.dataset, cfg.root, size=cfg.image_size, **cfg.extra)
    raise ValueError(f"unknown dataset {cfg.dataset!r}; choose from {DATASETS}")


def build_model(cfg: TrainConfig, splits: TwoViewSplits) -> TwoViewModel:
    """NYU ResNet-22 columns for images, MLP columns for feature vectors."""
    first = splits.train.views[splits.view_names[0]]
    if first.dim() == 4:
        return nyu_model(cfg.condition, splits.view_names, width=cfg.width, p_drop=cfg.p_drop)
    dims = {v: splits.train.views[v].shape[1] for v in splits.view_names}
    return mlp_model(cfg.condition, dims, hidden=cfg.hidden, p_drop=cfg.p_drop)


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


def evaluate(model: TwoViewModel, data: TwoViewData, device: str, batch_size: int = 256) -> tuple[float, float]:
    """ROC AUC and accuracy (threshold 0 on the logit) of ``model`` on ``data``."""
    model.eval()
    scores = []
    with torch.no_grad():
        for inputs, _ in data.batches(batch_size, device=device):
            scores.append(model(inputs).float().cpu())
    s = torch.cat(scores).numpy()
    y = data.y.numpy()
    return roc_auc(y, s), accuracy(y, (s > 0).astype(float))


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), y)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(cfg: TrainConfig, splits: TwoViewSplits | None = None, progress: bool = True) -> dict:
    """Train, record and evaluate one run; returns the results that are also written to ``results.json``."""
    if cfg.condition not in CONDITIONS:
        raise ValueError(f"unknown condition {cfg.condition!r}; choose from {CONDITIONS}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    t0 = time.perf_counter()
    splits = splits or build_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, splits).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, cfg.warmup_steps))
    use_cuda_amp = cfg.amp and cfg.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_cuda_amp else None
    amp_dtype = torch.float16 if use_cuda_amp else torch.bfloat16
    view_kw, attach_kw, attribution = recorder_views(model)
    run_dir = Path(cfg.out)
    config = {**asdict(cfg), "attribution": attribution, "data": splits.info, "n_train": len(splits.train)}
    gen = torch.Generator().manual_seed(cfg.seed)
    best_auc, step, history = -1.0, 0, []
    ckpt = run_dir / "best.pt"
    if cfg.probe_every > 0:
        inputs, y = next(splits.train.batches(cfg.batch_size, device=cfg.device))
        attach_kw["probe"] = dynamics.ProbeBatch(inputs=(inputs,), targets=y, loss_fn=_loss)
        attach_kw["probe_every"] = cfg.probe_every
    with dynamics.attach(model, opt, out=run_dir, config=config, seed=cfg.seed, condition=cfg.condition,
                         scaler=scaler, **view_kw, **attach_kw) as rec:
        bar = tqdm(total=total, desc=f"{cfg.dataset}/{cfg.condition}/seed{cfg.seed}", disable=not progress or None,
                   leave=False)
        for epoch in range(cfg.epochs):
            model.train()
            for inputs, y in splits.train.batches(cfg.batch_size, shuffle=True, generator=gen, device=cfg.device):
                with torch.autocast(device_type=cfg.device.split(":")[0], dtype=amp_dtype, enabled=cfg.amp):
                    loss = _loss(model(inputs), y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                scalars = {"loss": loss.detach()}
                if cfg.condition == "dropout":
                    scalars.update({f"present_{v}": c for v, c in model.last_present.items()})
                rec.log(**scalars)
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
            val_auc, val_acc = evaluate(model, splits.val, cfg.device)
            rec.log(val_auc=val_auc, val_acc=val_acc)  # attaches to the epoch's last optimizer step
            history.append({"epoch": epoch, "step": step, "val_auc": val_auc, "val_acc": val_acc})
            if val_auc > best_auc or math.isnan(best_auc):
                best_auc = val_auc
                torch.save(model.state_dict(), ckpt)
            bar.set_postfix(val_auc=f"{val_auc:.3f}")
            if step >= total:
                break
        bar.close()
        model.load_state_dict(torch.load(ckpt, weights_only=True, map_location=cfg.device))
        test_auc, test_acc = evaluate(model, splits.test, cfg.device)
        rec.log(test_auc=test_auc, test_acc=test_acc)  # best-validation checkpoint; on the last step
    results = {"dataset": cfg.dataset, "condition": cfg.condition, "seed": cfg.seed, "test_auc": test_auc,
               "test_acc": test_acc, "best_val_auc": best_auc, "steps": step, "history": history,
               "attribution": attribution, "seconds_train": time.perf_counter() - t0}
    results["utilization"] = write_utilization(model, splits, run_dir, cfg.device)
    results["seconds_total"] = time.perf_counter() - t0
    (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def write_utilization(model: TwoViewModel, splits: TwoViewSplits, run_dir: Path, device: str,
                      n_boot: int = 500) -> dict:
    """Test-set conditional utilization of each view (zeroed, and replaced by its training mean), written
    to ``run_dir/utilization.json`` by :func:`dynamics.utilization.save_utilization`; returns a summary."""
    from dynamics.utilization import save_utilization, utilization

    tables = [utilization(model, splits.test.loader(256), views=list(model.views), ablate=ablate,
                          train_loader=splits.train.loader(512), n_boot=n_boot, device=device)
              for ablate in ("zero", "mean")]
    table = pd.concat(tables, ignore_index=True)
    save_utilization(table, run_dir, split="test")
    auc = table[table["metric"] == "auc"]
    return {f"{r.ablate}/{r.view}": float(r.utilization) for r in auc.itertuples()}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    for name, value in asdict(d).items():
        if name in ("extra", "mfeat_views"):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            kind = int if name == "max_steps" else type(value)
            p.add_argument(flag, type=kind, default=value)
    p.add_argument("--mfeat-views", nargs=2, default=list(d.mfeat_views))
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
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=1, default=float))


if __name__ == "__main__":
    main()
