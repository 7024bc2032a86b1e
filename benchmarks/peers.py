"""dynamics beside other tools that look inside training, timed in one process on the benchmark model.

Each tool is attached to its own copy of the two-view ResNet-22 (same initial weights, AdamW, one fixed batch)
and set to record at every step; the variants are timed in interleaved rounds in shuffled order, so that the
drift of a shared machine hits them alike. The peers and what each records per step:

* Lightning's ``grad_norm`` (``lightning.pytorch.utilities``), called before the optimizer step as a
  LightningModule's ``on_before_optimizer_step`` would, its values kept as floats as a logger would;
* ``wandb.watch`` in offline mode with ``log_freq=1``, ``log="gradients"`` and ``log="all"``;
* TensorBoard gradient histograms (``SummaryWriter.add_histogram`` of every gradient);
* Cockpit's ``economy`` configuration (BackPACK under the hood). Its ``business`` and ``full``
  configurations (Hessian trace, TIC) are not run on this model.

The peers are optional: install them into their own virtualenv with ``make peers`` (which then runs this)
or ``bash benchmarks/peers_env.sh``, then ``.venv-peers/bin/python benchmarks/peers.py``. A peer that does not
import is reported and skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import (StepHooks, add_common_arguments, interleaved, machine_line,  # noqa: E402
                    make_batch, make_model, markdown_table, median_ms, set_clock, time_steps)


class Dynamics(StepHooks):
    records = "per tensor: ‖g‖², ‖θ‖², ‖Δθ‖², g·Δθ (device buffer, Parquet every 100 steps)"

    def __init__(self, model, optimizer, tmp: Path, every: int = 1) -> None:
        import dynamics
        self.rec = dynamics.attach(model, optimizer, views={"cc": model.cc_column, "mlo": model.mlo_column},
                                   out=tmp / f"dynamics-every{every}", every=every)

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        self.rec.log(loss=loss)

    def close(self) -> None:
        self.rec.close()


class LightningGradNorm(StepHooks):
    records = "per tensor: ‖g‖ (floats), and the total"

    def __init__(self, model, optimizer, tmp: Path) -> None:
        from lightning.pytorch.utilities import grad_norm
        self.model, self.grad_norm, self.rows = model, grad_norm, []

    def before_step(self, step: int) -> None:
        self.rows.append({k: float(v) for k, v in self.grad_norm(self.model, norm_type=2).items()})


class WandbWatch(StepHooks):
    """``wandb.watch`` logs through the global run, so the watched models share one offline run."""

    records = {"gradients": "per tensor: a 64-bin histogram of g",
               "all": "per tensor: 64-bin histograms of g and of θ"}
    _run = None
    _open = 0

    def __init__(self, model, optimizer, tmp: Path, log: str) -> None:
        import wandb
        if WandbWatch._run is None:
            WandbWatch._run = wandb.init(mode="offline", dir=str(tmp), project="peers",
                                         settings=wandb.Settings(silent=True))
        WandbWatch._open += 1
        self.run = WandbWatch._run
        self.run.watch(model, log=log, log_freq=1, idx=WandbWatch._open)
        self.key = f"loss_{log}"

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        self.run.log({self.key: float(loss)})

    def close(self) -> None:
        WandbWatch._open -= 1
        if WandbWatch._open == 0:
            self.run.finish()
            WandbWatch._run = None


class TensorBoardHistograms(StepHooks):
    records = "per tensor: a histogram of g (event file)"

    def __init__(self, model, optimizer, tmp: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(tmp / "tensorboard"))
        self.named = list(model.named_parameters())

    def before_step(self, step: int) -> None:
        for name, p in self.named:
            self.writer.add_histogram(f"grad/{name}", p.grad, step)

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        self.writer.add_scalar("loss", float(loss), step)

    def close(self) -> None:
        self.writer.close()


class CockpitEconomy(StepHooks):
    records = ("per step: loss, ‖g‖ per tensor, update size, distance from init, gradient histogram, "
               "α (local step size), norm/inner-product/orthogonality tests (per-sample gradients)")

    def __init__(self, model, optimizer, tmp: Path) -> None:
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration
        extend(model)
        self.optimizer, self.individual = optimizer, torch.nn.BCEWithLogitsLoss(reduction="none")
        self.mean = extend(torch.nn.BCEWithLogitsLoss())
        self.cockpit = Cockpit(model.parameters(), quantities=configuration("economy"))
        self.losses: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.losses = self.individual(logits, targets)
        return self.mean(logits, targets)

    def backward(self, loss: torch.Tensor, step: int) -> None:
        info = {"batch_size": self.losses.shape[0], "individual_losses": self.losses, "loss": loss,
                "optimizer": self.optimizer}
        with self.cockpit(step, info=info):
            loss.backward(create_graph=self.cockpit.create_graph(step))


PEERS: dict[str, tuple[Callable, str]] = {  # name → (factory(model, optimizer, tmp), what it records)
    "plain": (lambda m, o, t: StepHooks(), "nothing"),
    "dynamics every step": (lambda m, o, t: Dynamics(m, o, t), Dynamics.records),
    "dynamics every=10": (lambda m, o, t: Dynamics(m, o, t, every=10), Dynamics.records + ", every 10th step"),
    "Lightning grad_norm": (LightningGradNorm, LightningGradNorm.records),
    "wandb.watch gradients": (lambda m, o, t: WandbWatch(m, o, t, "gradients"), WandbWatch.records["gradients"]),
    "wandb.watch all": (lambda m, o, t: WandbWatch(m, o, t, "all"), WandbWatch.records["all"]),
    "TensorBoard histograms": (TensorBoardHistograms, TensorBoardHistograms.records),
    "Cockpit economy": (CockpitEconomy, CockpitEconomy.records),
}


def _setup(names: list[str], tmp: Path, batch, device: str) -> tuple[dict, dict, dict[str, str]]:
    runs, hooks, failed = {}, {}, {}
    for name in names:
        factory, _ = PEERS[name]
        model, optimizer = make_model("separate", device)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h = factory(model, optimizer, tmp)
                time_steps(model, optimizer, batch, 1, h, [0])  # does it run at all on this model?
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            continue
        counter = [1]
        hooks[name] = h
        runs[name] = (lambda m, o, hk, c: lambda n: time_steps(m, o, batch, n, hk, c))(model, optimizer, h, counter)
    return runs, hooks, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per peer and round")
    parser.add_argument("--only", nargs="+", choices=list(PEERS), help="time these peers (plain is always timed)")
    add_common_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_clock(args.clock, args.device)
    os.environ.setdefault("WANDB_SILENT", "true")
    batch = make_batch(args.size, args.batch, args.device, torch.Generator().manual_seed(0))
    names = ["plain", *(n for n in (args.only or PEERS) if n != "plain")]
    before = machine_line(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        runs, hooks, failed = _setup(names, Path(tmp), batch, args.device)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            times = interleaved(runs, args.reps, args.steps)
            for h in hooks.values():
                h.close()
    median = {name: median_ms(t) for name, t in times.items()}
    print(f"two-view ResNet-22 (widths 16-256), batch {args.batch} x 2 views x {args.size}x{args.size}, AdamW, "
          f"{args.device}, {args.reps} rounds x {args.steps} steps, shuffled, {args.clock} clock; median step")
    print(f"before: {before}\nafter:  {machine_line(args.device)}\n")
    rows = [[name, f"{median[name]:.1f}", f"{median[name] / median['plain']:.2f}×", PEERS[name][1]]
            for name in names if name in median]
    rows += [[name, "did not run", "", failed[name]] for name in names if name in failed]
    print(markdown_table(["tool", "median step (ms)", "× plain", "records every step"], rows))


if __name__ == "__main__":
    main()
