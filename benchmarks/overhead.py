"""Recorder overhead on a two-view ResNet-22 (the NYU widths 16→256), beside the floor: the unavoidable traffic.

Median optimizer-step time without the recorder and with it (every step, every 10th, with the probe, with the
update-alignment plug-in, and shared-weight attribution), measured in interleaved rounds in shuffled order so
that drift of the machine hits every variant alike. In the same rounds it times **the floor**: plain torch ops that do only the memory
traffic no recorder of these quantities can avoid. Before the optimizer step they read g and θ and write one
copy θ_t; after it they read θ_t back with θ_{t+1} and g (and, with attribution, read each view's part of the
shared gradient once: autograd makes the parts anyway, so keeping them costs no write). Any recorder of ‖g‖²,
‖θ‖², ‖Δθ‖² and g·Δθ moves at least those bytes, so "added ÷ floor" says how close to the physical limit of
this machine the recorder is. The floor is timed twice: inside the training loop (in the optimizer's hooks,
where the recorder runs: caches as they are after backward) and alone, on the same tensors. A second copy of
the plain model, timed alike, shows the resolution of the measurement: two identical models differ in where
their memory lies, and on a small shared machine that alone moves a step by a few per cent. With
``--isolate`` every variant of every round runs in its own fresh process, as a user's one model does: in one
process the variants share a heap, and the allocator's reuse of it (or fresh, page-faulting memory) then
depends on the other variants. The second copy then shows the variation between processes.

A benchmark, not a test: ``python benchmarks/overhead.py`` (or ``make benchmark``); ``--help`` for options.
``--interventions`` times dynamics.balance's interventions instead (see ``benchmarks/interventions.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dynamics  # noqa: E402
from dynamics.schema import PROBE_CHANGE, RULES, probe_residual  # noqa: E402
from timing import (CLOCK, StepHooks, add_common_arguments, interleaved, isolated, loss_fn, machine_line,  # noqa: E402
                    make_batch, make_model, markdown_table, median_ms, set_clock, time_steps)

SEPARATE, SHARED = "separate", "shared"


class FloorOps:
    """The unavoidable traffic of every-step recording, as plain torch ops in the optimizer's step hooks.

    ``views`` > 0 adds attribution's: each view's part of the shared tensors' gradient read once after the step
    (the gradient stands for each part; the parts are autograd's own tensors, kept rather than written).
    """

    def __init__(self, params: list[torch.nn.Parameter], shared: list[torch.nn.Parameter], views: int) -> None:
        self.params, self.shared, self.views = params, shared, views
        self.prev = [torch.empty_like(p) for p in params]
        self.out: list[torch.Tensor] = []
        self._cpu = params[0].device.type == "cpu"

    def _copy(self, dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        if self._cpu:  # on a CPU a loop of copies is faster than the foreach copy
            for d, s in zip(dst, src):
                d.copy_(s)
        else:
            torch._foreach_copy_(dst, src)

    def pre(self, *_) -> None:
        """Read g and θ, write θ_t."""
        with torch.no_grad():
            self.out = list(torch._foreach_norm([p.grad for p in self.params]))
            self._copy(self.prev, [p.detach() for p in self.params])

    def post(self, *_) -> None:
        """Read θ_t, θ_{t+1} and g (and each view's part) once."""
        with torch.no_grad():
            parts = [[p.grad for p in self.shared]] * self.views
            for tensors in (self.prev, [p.detach() for p in self.params], [p.grad for p in self.params], *parts):
                self.out += torch._foreach_norm(tensors)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(self.pre)
        optimizer.register_step_post_hook(self.post)


class Recorded(StepHooks):
    """dynamics attached to the model: the loop only adds ``rec.log(loss=loss)``."""

    def __init__(self, rec) -> None:
        self.rec = rec

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        self.rec.log(loss=loss)

    def close(self) -> None:
        self.rec.close()


def _attach_kwargs(name: str, model, probe) -> dict:
    if SHARED in name:
        return {"views": list(model.views), "attribute": {model.column: list(model.views)}}
    kwargs = {"views": {"cc": model.cc_column, "mlo": model.mlo_column}}
    if "probe" in name:
        kwargs.update(probe=probe, probe_every=50)
    if "every=10" in name:
        kwargs.update(every=10)
    if "update alignment" in name:
        kwargs.update(parts=[dynamics.UpdateAlignment()])
    return kwargs


VARIANTS = [  # (name, condition, kind): kind is plain, control, floor or recorded
    ("plain", SEPARATE, "plain"), ("plain, second copy", SEPARATE, "control"), ("floor ops", SEPARATE, "floor"),
    ("recorded every step", SEPARATE, "recorded"),
    ("recorded every=10", SEPARATE, "recorded"), ("recorded + probe K=50", SEPARATE, "recorded"),
    ("recorded + update alignment", SEPARATE, "recorded"),
    ("plain shared", SHARED, "plain"), ("floor ops shared + parts", SHARED, "floor"),
    ("recorded shared + attribution", SHARED, "recorded")]
ALONE = [("floor ops alone", SEPARATE, 0), ("floor ops alone shared + parts", SHARED, 2)]  # (name, condition, views)


def _floor_alone(condition: str, device: str, views: int) -> "callable":
    """The floor's ops alone (outside training) on the model's tensors, with stand-in gradients."""
    model, _ = make_model(condition, device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    ops = FloorOps(params, list(model.column.parameters()) if views else [], views)

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = CLOCK["clock"]()
            ops.pre()
            ops.post()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(CLOCK["clock"]() - start)
        return times
    return run


def _runs(args, tmp: Path, batch, probe, only: str | None = None) -> tuple[dict, list]:
    """The timed runs by name (``only``: that one alone), and the recorders to close."""
    runs, closers = {}, []
    for i, (name, condition, kind) in enumerate(VARIANTS):
        if only not in (None, name):
            continue
        model, optimizer = make_model(condition, args.device)
        hooks = StepHooks()
        if kind == "floor":
            shared = list(model.column.parameters()) if condition == SHARED else []
            FloorOps(list(model.parameters()), shared, len(model.views) if shared else 0).attach(optimizer)
        elif kind == "recorded":
            hooks = Recorded(dynamics.attach(model, optimizer, out=tmp / f"run{i}", flush_every=50,
                                             **_attach_kwargs(name, model, probe)))
            closers.append(hooks)
        counter = [0]
        runs[name] = (lambda m, o, h, c: lambda n: time_steps(m, o, batch, n, h, c))(model, optimizer, hooks, counter)
    for name, condition, views in ALONE:
        if only in (None, name):
            runs[name] = _floor_alone(condition, args.device, views)
    if not runs:
        raise SystemExit(f"no variant named {only!r}")
    return runs, closers


def _residuals(closers: list[Recorded]):
    """The probe's loss change and residual per rule, from the probed run."""
    probed = next(h.rec for h in closers if h.rec.meta.get("probe"))
    _, steps = dynamics.load(probed.run_dir)
    columns = ["step", PROBE_CHANGE, *(probe_residual(rule) for rule in RULES)]
    return steps.dropna(subset=[PROBE_CHANGE])[columns]


def _table(median: dict[str, float]) -> str:
    rows = []
    for name, condition, kind in VARIANTS:
        plain = median["plain shared" if condition == SHARED else "plain"]
        floor = median["floor ops shared + parts" if condition == SHARED else "floor ops"] - plain
        added = median[name] - plain
        rows.append([name, f"{median[name]:.1f}", f"{median[name] / plain:.3f}×",
                     "" if kind == "plain" else f"{added:+.1f}",
                     "" if kind == "plain" else f"{added / floor:.2f}×" if floor > 0 else "n/a"])
    for name, _, _ in ALONE:
        rows.append([name, f"{median[name]:.1f}", "", "", ""])
    return markdown_table(["variant", "median step (ms)", "× plain", "added (ms)", "added ÷ floor"], rows)


def _time_one(args, batch, probe) -> None:
    """A child of ``--isolate``: warm-up steps, then the timed steps of one variant, as one JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        runs, closers = _runs(args, Path(tmp), batch, probe, args.only)
        runs[args.only](2)
        print(json.dumps(runs[args.only](args.steps)))
        for hooks in closers:
            hooks.close()


def _time_in_one_process(args, batch, probe) -> tuple[dict, "pandas.DataFrame | None"]:
    """Every variant in this process, interleaved; and the probe's residuals if asked for."""
    with tempfile.TemporaryDirectory() as tmp:
        runs, closers = _runs(args, Path(tmp), batch, probe)
        times = interleaved(runs, args.reps, args.steps)
        for hooks in closers:
            hooks.close()
        return times, (_residuals(closers) if args.residuals else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    add_common_arguments(parser)
    parser.add_argument("--residuals", action="store_true", help="also print the probe's residuals per rule")
    parser.add_argument("--interventions", action="store_true", help="time dynamics.balance's interventions")
    parser.add_argument("--isolate", action="store_true",
                        help="run every variant of every round in a fresh process (one model per process)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # a child of --isolate: time this variant alone
    args = parser.parse_args()
    if args.isolate and args.residuals:
        parser.error("--residuals reads the probed run of one process: leave out --isolate")
    torch.set_num_threads(args.threads)
    set_clock(args.clock, args.device)
    if args.interventions:
        import interventions
        interventions.main(args)
        return
    g = torch.Generator().manual_seed(0)
    batch = make_batch(args.size, args.batch, args.device, g)
    probe_x, probe_y = make_batch(args.size, args.batch, args.device, g)
    probe = dynamics.ProbeBatch((probe_x,), probe_y, loss_fn)
    before = machine_line(args.device)
    if args.only:
        _time_one(args, batch, probe)
        return
    if args.isolate:
        names = [name for name, _, _ in VARIANTS + ALONE]
        child = [a for a in sys.argv[1:] if a != "--isolate"]
        times, residuals = isolated(names, args.reps, [sys.executable, __file__, *child]), None
    else:
        times, residuals = _time_in_one_process(args, batch, probe)
    n_tensors = sum(1 for _ in make_model(SEPARATE, "cpu")[0].parameters())
    print(f"two-view ResNet-22 (widths 16-256), {n_tensors} tensors, batch {args.batch} x 2 views x "
          f"{args.size}x{args.size}, {args.device}, {args.reps} rounds x {args.steps} steps, shuffled"
          + (", each variant of each round in a fresh process" if args.isolate else ", in one process"))
    print(f"before: {before}\nafter:  {machine_line(args.device)}")
    print("floor = (floor ops) - (plain) in the same rounds; added = variant - plain (shared: - plain shared)\n")
    print(_table({name: median_ms(t) for name, t in times.items()}))
    if residuals is not None:
        print("\nprobe on the benchmark model (loss change on the probe batch and residual of each rule):")
        print(residuals.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
