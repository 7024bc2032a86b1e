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


def _make(seed: int):
    torch.manual_seed(seed)
    model = nyu_model("separate")
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _time_steps(model, optimizer, batch, steps: int, rec=None) -> list[float]:
    times = []
    x, y = batch
    for _ in range(steps):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rec is not None:
            rec.log(loss=loss)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="input image side (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = ({v: torch.randn(args.batch, 1, args.size, args.size, generator=g) for v in ("cc", "mlo")},
             torch.randint(0, 2, (args.batch,), generator=g).float())
    plain_model, plain_opt = _make(0)
    rec_model, rec_opt = _make(0)
    n_tensors = sum(1 for _ in rec_model.parameters())
    plain, recorded = [], []
    with tempfile.TemporaryDirectory() as tmp:
        rec = dynamics.attach(rec_model, rec_opt, views={"cc": rec_model.cc_column, "mlo": rec_model.mlo_column},
                              out=Path(tmp) / "run", flush_every=50)
        _time_steps(plain_model, plain_opt, batch, 3)          # warm-up
        _time_steps(rec_model, rec_opt, batch, 3, rec)
        for _ in range(args.reps):
            plain += _time_steps(plain_model, plain_opt, batch, args.steps)
            recorded += _time_steps(rec_model, rec_opt, batch, args.steps, rec)
        rec.close()
    p, r = statistics.median(plain), statistics.median(recorded)
    print(f"two-view ResNet-22, {n_tensors} tensors, batch {args.batch}×2 views×{args.size}², "
          f"{torch.get_num_threads()} threads, {args.reps}×{args.steps} interleaved steps each")
    print(f"median step: plain {p * 1e3:.1f} ms, recorded every step {r * 1e3:.1f} ms, ratio {r / p:.3f}x")


if __name__ == "__main__":
    main()
