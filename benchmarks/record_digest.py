"""Record six small runs the same way every time and print a digest of what loads back, so that two checkouts
(before and after a refactor of record/ or store/) can be compared number for number.

    python benchmarks/record_digest.py OUT      # writes OUT/<run>/ and OUT/digest.json
    dynamics report 'OUT/*-*' --out REPORT        # then diff two REPORTs (report.md, CSVs, PNGs)

Two conditions (separate columns; one shared column with per-call attribution) × 3 seeds, 30 AdamW steps with
gradient clipping, the probe every 5 steps, a logged loss, flushes of 7 steps (so parts are compacted). The
digest is the SHA-256 of each loaded table written as CSV: ``load`` (per_param, per_step) and ``load_probe``.
A benchmark-style tool, not a test: the same digest from two checkouts means the same numbers were recorded.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

import dynamics


class Net(nn.Module):
    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.cc = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8))
        self.mlo = self.cc if shared else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(16, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cc(a), self.mlo(b)], 1)).squeeze(1)


def record(out: Path, condition: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = Net(shared=condition == "shared")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(100 + seed)
    data = [(torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g) * 0.5, torch.randn(16, generator=g))
            for _ in range(30)]
    probe = dynamics.ProbeBatch(inputs=data[0][:2], targets=data[0][2], loss_fn=lambda o, y: ((o - y) ** 2).mean())
    run = out / f"{condition}-{seed}"
    options = dict(out=run, condition=condition, seed=seed, flush_every=7, probe=probe, probe_every=5)
    if condition == "shared":
        rec = dynamics.attach(model, optimizer, ["cc", "mlo"], attribute={model.cc: ["cc", "mlo"]}, **options)
    else:
        rec = dynamics.attach(model, optimizer, {"cc": model.cc, "mlo": model.mlo}, **options)
    for a, b, y in data:
        loss = ((model(a, b) - y) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
        rec.log(loss=loss.detach())
    rec.close()
    return run


def digest(run: Path) -> list[str]:
    per_param, per_step = dynamics.load(run)
    tables = (per_param, per_step, dynamics.load_probe(run))
    return [hashlib.sha256(t.to_csv(index=False).encode()).hexdigest() for t in tables]


def main() -> None:
    out = Path(sys.argv[1])
    runs = [record(out, condition, seed) for condition in ("separate", "shared") for seed in range(3)]
    result = {run.name: digest(run) for run in runs}
    (out / "digest.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
