"""What the benchmarks share: the benchmark model and batch, one timed training step with hooks for a recorder,
interleaved rounds in shuffled order, and a line that says what machine (and how loaded) the figures are from.

The benchmark model is the NYU two-view ResNet-22 (widths 16→256, 5.86 M parameters in 138 tensors in the
``separate`` condition) trained with AdamW on a fixed batch. Timing is per optimizer step (forward, backward,
step, zero_grad and whatever a recorder adds), synchronised on CUDA.
"""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.models import nyu_model  # noqa: E402

VIEWS = ("cc", "mlo")


CLOCK = {"clock": time.perf_counter}  # set_clock("process"): CPU time of this process (all its threads)


def set_clock(name: str, device: str) -> None:
    """``wall`` (default) or ``process``: on a shared machine the process's CPU time leaves out the time the
    process waits for a core (use it with ``--threads 1``: idle threads of a pool can spin and count)."""
    if name not in ("wall", "process"):
        raise ValueError(f"clock must be wall or process, got {name!r}")
    if name == "process" and device != "cpu":
        raise ValueError("the process clock measures CPU time: use it with the cpu device")
    CLOCK["clock"] = time.process_time if name == "process" else time.perf_counter



def make_model(condition: str, device: str, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The benchmark model (same initial weights for every variant) and its AdamW optimizer."""
    torch.manual_seed(seed)
    model = nyu_model(condition).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def make_batch(size: int, batch: int, device: str, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """One fixed batch of ``batch`` cases, each view ``size``×``size``, with binary targets."""
    inputs = {v: torch.randn(batch, 1, size, size, generator=g).to(device) for v in VIEWS}
    return inputs, torch.randint(0, 2, (batch,), generator=g).float().to(device)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)


class StepHooks:
    """What a recorder adds to the training step; the default adds nothing (the plain loop)."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_fn(logits, targets)

    def backward(self, loss: torch.Tensor, step: int) -> None:
        loss.backward()

    def before_step(self, step: int) -> None:
        """After backward, before optimizer.step()."""

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """After optimizer.step() and zero_grad()."""

    def close(self) -> None:
        """Flush and detach (outside the timed steps)."""


def sync(device: str) -> None:
    if device.startswith("cuda"):  # timing only: the step must have finished on the GPU
        torch.cuda.synchronize()


def time_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple, steps: int,
               hooks: StepHooks, counter: list[int], clock: Callable[[], float] | None = None) -> list[float]:
    """Seconds of each of ``steps`` training steps by ``clock`` (wall clock; ``time.process_time`` for this
    process's CPU time); ``counter`` holds the variant's step index."""
    clock = clock or CLOCK["clock"]
    x, y = batch
    device = y.device.type
    times = []
    for _ in range(steps):
        step = counter[0]
        sync(device)
        start = clock()
        loss = hooks.loss(model(x), y)
        hooks.backward(loss, step)
        hooks.before_step(step)
        optimizer.step()
        optimizer.zero_grad()
        hooks.after_step(step, loss)
        sync(device)
        times.append(clock() - start)
        counter[0] += 1
    return times


def interleaved(runs: Mapping[str, Callable[[int], list[float]]], reps: int, steps: int, warmup: int = 2,
                seed: int = 0) -> dict[str, list[float]]:
    """Each ``runs[name](n)`` times n steps; every round runs each once, in a fresh shuffled order, so that
    drift of a shared machine hits all variants alike. Returns every timed step per variant."""
    if warmup:
        for run in runs.values():
            run(warmup)
    order, rng = list(runs), random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            times[name] += runs[name](steps)
    return times


def isolated(names: list[str], reps: int, command: list[str], seed: int = 0) -> dict[str, list[float]]:
    """As :func:`interleaved`, but every variant of every round runs in a fresh process: ``command`` plus
    ``--only NAME`` must time that one variant and print its step times (seconds) as a JSON list on its last
    line. In one process the variants' tensors share one heap, and how the allocator reuses it (or maps fresh,
    page-faulting memory) then depends on the other variants: one model per process is what a user has."""
    def in_a_process(name: str) -> Callable[[int], list[float]]:
        def run(_steps: int) -> list[float]:  # the child's own --steps decide
            proc = subprocess.run([*command, "--only", name], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"variant {name!r} failed:\n{proc.stderr[-2000:]}")
            return json.loads(proc.stdout.strip().splitlines()[-1])
        return run
    return interleaved({name: in_a_process(name) for name in names}, reps, 0, warmup=0, seed=seed)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def add_common_arguments(parser) -> None:
    """The options every benchmark of the model takes."""
    parser.add_argument("--size", type=int, default=96, help="input image side (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall clock, or this process's CPU time (robust on a shared machine; with --threads 1)")


def machine_line(device: str) -> str:
    """Processor, cores, torch and threads, and the load averages (others' work on a shared machine)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    where = torch.cuda.get_device_name() if device.startswith("cuda") else cpu
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{where}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {load}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pastes into the README as it is)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
