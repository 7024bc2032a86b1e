"""The one in-memory format every data set is turned into, and a stratified split.

Small two-view data sets fit in memory, so a split is just one tensor per view plus a label vector;
training iterates over index batches without a DataLoader (no worker processes on a 2-core machine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch


@dataclass
class TwoViewData:
    """One split: ``views[name]`` is a float tensor with one row per sample, ``y`` the binary labels."""

    views: dict[str, torch.Tensor]
    y: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, x in self.views.items():
            if x.shape[0] != self.y.shape[0]:
                raise ValueError(f"view {name!r} has {x.shape[0]} rows but there are {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu", order: torch.Tensor | None = None,
                ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Yield ``(inputs, y)`` with ``inputs = {view: tensor}``; the last batch may be smaller. ``order``: the
        sample indices to take, in that order (e.g. a DistributedSampler's shard), instead of all samples in
        their order (or shuffled with ``generator``)."""
        if order is None:
            n = len(self)
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield ({k: v[idx].to(device) for k, v in self.views.items()}, self.y[idx].to(device))

    def head(self, n: int) -> "TwoViewData":
        """The first ``n`` samples (all of them when there are fewer): a split's order is random, so its head
        is a random subset."""
        return TwoViewData({k: v[:n] for k, v in self.views.items()}, self.y[:n], self.ids[:n])

    def loader(self, batch_size: int = 256, device: str | torch.device = "cpu") -> "_Loader":
        """A re-iterable, unshuffled batch source (what evaluation and utilization read)."""
        return _Loader(self, batch_size, device)


class _Loader:
    """Re-iterable wrapper so a split can be passed where a DataLoader is expected."""

    def __init__(self, data: TwoViewData, batch_size: int, device: str | torch.device) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device

    def __iter__(self):
        return self.data.batches(self.batch_size, device=self.device)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)


@dataclass
class TwoViewSplits:
    """train/val/test splits plus a description (view names, sizes, provenance)."""

    train: TwoViewData
    val: TwoViewData
    test: TwoViewData
    view_names: tuple[str, str]
    info: dict = field(default_factory=dict)


def stratified_split(y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices of train/val/test with each class split in the same proportions (deterministic in ``seed``)."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_train = int(np.floor(fractions[0] * idx.size + 0.5))
        n_val = int(np.floor(fractions[1] * idx.size + 0.5))
        for p, chunk in zip(parts, (idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])):
            p.append(chunk)
    return tuple(np.sort(np.concatenate(p)) for p in parts)
