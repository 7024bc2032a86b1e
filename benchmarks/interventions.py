"""The cost of dynamics.balance's interventions on the benchmark model (run as ``overhead.py --interventions``).

Each intervention on its own copy of the model (same initial weights), without a recorder (its own cost) and
with one recording every step (what a user sees): modality dropout as the reproduction's model uses it and as a
hook on the fusion head, re-balancing reading the speeds every step and every 10th, OGM-GE with and without its
noise. Median step time of interleaved rounds in shuffled order, by the wall clock or, with ``--clock process``,
by this process's CPU time (steadier where other jobs load the machine: it does not count waiting for a core).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import dynamics
from dynamics.balance import modality_dropout, ogm_ge, rebalance
from timing import StepHooks, interleaved, machine_line, make_batch, make_model, markdown_table, median_ms, time_steps

CRITERION = torch.nn.BCEWithLogitsLoss()  # a module, so that OGM-GE's hook on it sees the targets


def _branches(model):
    return {"cc": model.cc_column, "mlo": model.mlo_column}


VARIANTS = {  # name -> (model condition, handle maker or None)
    "plain": ("separate", None),
    "dropout (the model's own)": ("dropout", None),
    "dropout hook on the head": ("separate", lambda m, o: modality_dropout(m.head, ["cc", "mlo"], p=0.25)),
    "rebalance every=1": ("separate", lambda m, o: rebalance(m.head, o, _branches(m), every=1)),
    "rebalance every=10": ("separate", lambda m, o: rebalance(m.head, o, _branches(m), every=10)),
    "ogm-ge": ("separate", lambda m, o: ogm_ge(m.head, o, _branches(m), loss=CRITERION, alpha=0.5)),
    "ogm-ge noise=False": ("separate", lambda m, o: ogm_ge(m.head, o, _branches(m), loss=CRITERION, alpha=0.5,
                                                            noise=False)),
}


class Hooks(StepHooks):
    """The criterion module (OGM-GE reads the targets from it); with a recorder, ``rec.log(loss=loss)``."""

    def __init__(self, rec=None) -> None:
        self.rec = rec

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return CRITERION(logits, targets)

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        if self.rec is not None:
            self.rec.log(loss=loss)


def _measure(args, recorded: bool, batch) -> dict[str, float]:
    runs, closers = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (condition, make)) in enumerate(VARIANTS.items()):
            model, optimizer = make_model(condition, args.device)
            rec = dynamics.attach(model, optimizer, views=_branches(model), out=Path(tmp) / f"run{i}",
                                  flush_every=50) if recorded else None
            closers += [c for c in (make(model, optimizer) if make else None, rec) if c is not None]
            hooks, counter = Hooks(rec), [0]
            runs[name] = (lambda m, o, h, c: lambda n: time_steps(m, o, batch, n, h, c))(
                model, optimizer, hooks, counter)
        times = interleaved(runs, args.reps, args.steps)
        for closer in closers:  # handles before their recorder
            closer.remove() if hasattr(closer, "remove") else closer.close()
    return {name: median_ms(t) for name, t in times.items()}


def main(args) -> None:
    batch = make_batch(args.size, args.batch, args.device, torch.Generator().manual_seed(0))
    print(f"interventions on the two-view ResNet-22, batch {args.batch} x 2 views x {args.size}x{args.size}, "
          f"{args.device}, {args.reps} rounds x {args.steps} steps, shuffled, {args.clock} clock")
    print(f"before: {machine_line(args.device)}", flush=True)
    rows = {}
    for recorded in (False, True):
        rows[recorded] = _measure(args, recorded, batch)
        print(f"measured {'with' if recorded else 'without'} a recorder: {machine_line(args.device)}", flush=True)
    table = [[name, f"{rows[False][name]:.1f}", f"{rows[False][name] / rows[False]['plain']:.3f}×",
              f"{rows[True][name]:.1f}", f"{rows[True][name] / rows[True]['plain']:.3f}×"] for name in VARIANTS]
    print(markdown_table(["variant", "no recorder (ms)", "× plain", "recorder every step (ms)", "× plain"], table))
