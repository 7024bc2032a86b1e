"""Recorder overhead on a two-view ResNet-22 (the NYU widths 16→256) at a small input size.

Median optimizer-step time without the recorder vs with it attached and recording every step, measured in
interleaved repetitions (plain, recorded, plain, recorded, ...) so that drift of the machine hits both alike.
A benchmark, not a test: run ``python benchmarks/overhead.py`` (or ``make benchmark``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dynamics  # noqa: E402
from analyses.models import nyu_model  # noqa: E402


def _make(seed: int, condition: str, device: str):
    torch.manual_seed(seed)
    model = nyu_model(condition).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _sync(device: str) -> None:
    if device.startswith("cuda"):  # timing only: the step must have finished on the GPU
        torch.cuda.synchronize()


def _time_steps(model, optimizer, batch, steps: int, rec=None) -> list[float]:
    times = []
    x, y = batch
    device = y.device.type
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rec is not None:
            rec.log(loss=loss)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _variants(size: int, batch: int, g: torch.Generator, device: str):
    """name → (model, optimizer, attach kwargs or None): the configurations timed side by side."""
    probe_x = {v: torch.randn(batch, 1, size, size, generator=g).to(device) for v in ("cc", "mlo")}
    probe = dynamics.ProbeBatch((probe_x,), torch.randint(0, 2, (batch,), generator=g).float().to(device),
                                torch.nn.functional.binary_cross_entropy_with_logits)
    variants = {}
    for name, condition in [("plain", "separate"), ("recorded", "separate"), ("recorded every=10", "separate"),
                            ("recorded+probe K=50", "separate"),
                            ("plain shared", "shared"), ("recorded shared+attribution", "shared")]:
        model, optimizer = _make(0, condition, device)
        if name.startswith("plain"):
            kwargs = None
        elif condition == "shared":
            kwargs = {"views": ["cc", "mlo"], "attribute": {model.column: ["cc", "mlo"]}}
        else:
            kwargs = {"views": {"cc": model.cc_column, "mlo": model.mlo_column}}
            if "probe" in name:
                kwargs.update(probe=probe, probe_every=50)
            if "every=10" in name:
                kwargs.update(every=10)
        variants[name] = (model, optimizer, kwargs)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="input image side (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = ({v: torch.randn(args.batch, 1, args.size, args.size, generator=g).to(args.device) for v in ("cc", "mlo")},
             torch.randint(0, 2, (args.batch,), generator=g).float().to(args.device))
    variants = _variants(args.size, args.batch, g, args.device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        recs = {name: dynamics.attach(m, o, out=Path(tmp) / f"run{i}", flush_every=50, **kw)
                for i, (name, (m, o, kw)) in enumerate(variants.items()) if kw is not None}
        for name, (m, o, _) in variants.items():  # warm-up
            _time_steps(m, o, batch, 2, recs.get(name))
        for _ in range(args.reps):
            for name, (m, o, _) in variants.items():
                times[name] += _time_steps(m, o, batch, args.steps, recs.get(name))
        for rec in recs.values():
            rec.close()
        _, probed = dynamics.load(recs["recorded+probe K=50"].run_dir)
        residuals = probed.dropna(subset=["probe_change"])[
            ["step", "probe_change", "probe_residual_first", "probe_residual_trapezoid", "probe_residual_simpson"]]
    n_tensors = sum(1 for _ in variants["plain"][0].parameters())
    print(f"two-view ResNet-22 (widths 16-256), {n_tensors} tensors, batch {args.batch} x 2 views x "
          f"{args.size}x{args.size}, {args.device}, {torch.get_num_threads()} threads, {args.reps}x{args.steps} "
          f"interleaved steps")
    median = {name: statistics.median(t) for name, t in times.items()}
    mean = {name: statistics.fmean(t) for name, t in times.items()}
    for name, value in median.items():
        base = "plain shared" if "shared" in name else "plain"
        print(f"  {name:30s} median step {value * 1e3:7.1f} ms   ratio {value / median[base]:.3f}x   "
              f"(mean {mean[name] * 1e3:7.1f} ms, ratio {mean[name] / mean[base]:.3f}x)")
    print("probe on the benchmark model (loss change on the probe batch and residual of each rule):")
    print(residuals.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
