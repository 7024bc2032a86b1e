"""Digits in two renderings: a coloured view with a fast but unreliable colour cue, and a grey view.

The images are scikit-learn's bundled 8×8 handwritten digits (1,797 samples, pixel values 0–16), read from
``sklearn/datasets/data/digits.csv.gz`` inside the installed scikit-learn wheel; scikit-learn itself is never
imported (``pip install --no-deps scikit-learn==1.6.1`` puts the file there).

Task: is the digit even? Each sample gets a colour, red or green; in training and validation the colour
agrees with the label with probability ``agree_train`` (0.95: green for even), at test time with
``agree_test`` (0.5: the colour says nothing; a distribution shift the model cannot see coming).

- ``colour``: a coarse copy of the image (2 × 2 pixel blocks averaged: 4 × 4) drawn in its colour, 3 × 16
  numbers (red, green, blue). The colour is one linear direction of this view, so it is learned in a few
  steps: the fast view, and the unreliable one (the coarse shape keeps a little information of its own).
- ``grey``: the full 8 × 8 image in grey with Gaussian pixel noise (σ = ``noise``, pixel values 0–16), 64
  numbers. Parity must be read from the shape: the slow view, and the one that survives the shift.

A model that leans on the fast view (greedy learning) loses under the shift; one that learns both views
keeps the grey view's accuracy. Features are standardised with the training split's mean and spread.
"""
from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import torch

from analyses.datasets.common import TwoViewData, TwoViewSplits, stratified_split

VIEWS = ("colour", "grey")
WHEEL_PATH = "sklearn/datasets/data/digits.csv.gz"
RED, GREEN = np.array([1.0, 0.15, 0.1]), np.array([0.1, 0.8, 0.2])


@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines the task (its split, the colours and their agreement with the label)."""

    seed: int = 0
    agree_train: float = 0.95  # P(colour matches the label) in training and validation
    agree_test: float = 0.5    # ... and in the test split: the shift
    noise: float = 6.0         # std of the grey view's pixel noise (pixels are 0–16)
    block: int = 2             # the colour view averages block × block pixels

    def __post_init__(self) -> None:
        for name in ("agree_train", "agree_test"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DigitsConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.noise < 0 or self.block not in (1, 2, 4, 8):
            raise ValueError(f"DigitsConfig needs noise >= 0 and block in 1, 2, 4, 8; got {self.noise}, {self.block}")


def csv_path() -> Path:
    """Where the installed scikit-learn wheel keeps the digits (clear error if it is not installed)."""
    try:
        path = Path(distribution("scikit-learn").locate_file(WHEEL_PATH))
    except PackageNotFoundError:
        raise ModuleNotFoundError("the digits task reads scikit-learn's bundled data file: "
                                  "pip install --no-deps scikit-learn==1.6.1") from None
    if not path.is_file():
        raise FileNotFoundError(f"no {WHEEL_PATH} in the installed scikit-learn (looked at {path})")
    return path


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels (1797, 64) float32 in 0–16 and digit labels (1797,) from the bundled CSV (64 pixels, then label)."""
    with gzip.open(csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{csv_path()}: expected 65 columns (64 pixels and the digit), got shape {table.shape}")
    return table[:, :64].astype(np.float32), table[:, 64].astype(np.int64)


def render(pixels: np.ndarray, green: np.ndarray, cfg: DigitsConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Both views of every sample: the coarse image in its colour (n, 3·(8/block)², channel-major) and the
    noisy grey image (n, 64)."""
    n, k = len(pixels), 8 // cfg.block
    coarse = pixels.reshape(n, k, cfg.block, k, cfg.block).mean(axis=(2, 4)).reshape(n, -1)
    colours = np.where(green[:, None], GREEN, RED)                              # (n, 3)
    coloured = (colours[:, :, None] * coarse[:, None, :]).reshape(n, -1)
    grey = pixels + cfg.noise * rng.standard_normal(pixels.shape)
    return {"colour": coloured.astype(np.float32), "grey": grey.astype(np.float32)}


def load(cfg: DigitsConfig | None = None, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> TwoViewSplits:
    """The two-view digits task (see the module docstring), split stratified by digit."""
    cfg = cfg or DigitsConfig()
    pixels, digits = read_digits()
    y = (digits % 2 == 0)
    parts = stratified_split(digits, fractions, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 7919)
    agree = np.full(len(y), cfg.agree_train)
    agree[parts[2]] = cfg.agree_test
    green = np.where(rng.random(len(y)) < agree, y, ~y)  # green for even when the colour agrees
    views = render(pixels, green, cfg, rng)
    mean = {v: views[v][parts[0]].mean(0) for v in VIEWS}
    std = {v: views[v][parts[0]].std(0) + 1e-6 for v in VIEWS}

    def take(idx: np.ndarray) -> TwoViewData:
        xs = {v: torch.from_numpy((views[v][idx] - mean[v]) / std[v]) for v in VIEWS}
        return TwoViewData(xs, torch.from_numpy(y[idx].astype(np.float32)), [f"digits-{i}" for i in idx])

    train, val, test = (take(i) for i in parts)
    return TwoViewSplits(train, val, test, VIEWS, {"dataset": "digits", **asdict(cfg), "task": "even digit"})
