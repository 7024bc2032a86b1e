"""Conditional utilization rate: how much a trained model relies on each view (Wu et al., ICML 2022).

The model is evaluated on a loader with all views, then once per view with that view removed (its
input zeroed, or replaced by its training-set mean). For a metric A, the conditional utilization
rate of view v is ``u(v) = (A(all) - A(all without v)) / A(all)``: the relative loss of performance
when v is taken away given the other views. Metrics: accuracy and ROC AUC (via Mann-Whitney U, no
scikit-learn), each with a paired bootstrap interval over examples.

How a batch is split into views (the protocol):

* ``split(batch) -> (x, y)``; by default ``batch[0], batch[1]`` for a tuple/list batch, or
  ``batch["x"], batch["y"]`` for a dict batch.
* ``x`` is a dict ``{view: tensor}``, a tuple/list of tensors, or one tensor whose features along
  dimension 1 hold the views.
* ``views`` names the views: a list of names (dict keys, or positions in a tuple in that order), or a
  mapping ``name -> key | position | index`` where index selects columns of dimension 1 of a
  single-tensor ``x`` (a slice, a list of ints or a boolean mask).
* ``forward(model, x) -> output``; by default ``model(*x)`` for a tuple/list and ``model(x)`` otherwise.
  Outputs of shape (n, k>1) are class scores (softmax for AUC, argmax for accuracy); outputs of shape
  (n,) or (n, 1) are binary logits (accuracy thresholds them at ``threshold``).

Results are written beside a run as ``utilization.json`` (:func:`save_utilization`) and read back by
:func:`load_utilization` and the report.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .cleaning import check_columns
from .metrics import accuracy, percentile_interval, roc_auc

__all__ = ["utilization", "save_utilization", "load_utilization", "UTILIZATION_FILE", "COLUMNS"]

UTILIZATION_FILE = "utilization.json"
COLUMNS = ("view", "metric", "with_view", "without_view", "utilization", "utilization_lo", "utilization_hi",
           "n_examples", "ablate")
_REQUIRED = ("view", "metric", "with_view", "without_view")  # what a saved or loaded table must have


def _default_split(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        if "x" not in batch or "y" not in batch:
            raise ValueError(f"dict batches need keys 'x' and 'y' (or pass split=); got {list(batch)}")
        return batch["x"], batch["y"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("cannot split the batch into (inputs, targets); pass split=")


def _default_forward(model: torch.nn.Module, x: Any) -> torch.Tensor:
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def _selectors(x: Any, views: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(views, Mapping):
        sel = dict(views)
    elif isinstance(x, Mapping):
        sel = {v: v for v in views}
    elif isinstance(x, (tuple, list)):
        sel = {v: i for i, v in enumerate(views)}
    else:
        raise ValueError("a single-tensor input needs views={name: column index} to know where each view is")
    if isinstance(x, Mapping):
        for name, key in sel.items():
            if key not in x:
                raise ValueError(f"view {name!r}: key {key!r} not in the batch inputs {list(x)}")
    elif isinstance(x, (tuple, list)):
        for name, key in sel.items():
            if not isinstance(key, int) or not 0 <= key < len(x):
                raise ValueError(f"view {name!r}: position {key!r} outside the {len(x)} batch inputs")
    return sel


def _get(x: Any, key: Any) -> torch.Tensor:
    if isinstance(x, (Mapping, tuple, list)):
        return x[key]
    return x[:, key]


def _replace(x: Any, key: Any, fill: torch.Tensor | None) -> Any:
    """A copy of ``x`` with the part ``key`` zeroed (``fill`` None) or set to ``fill`` (broadcast over rows)."""
    def filled(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t) if fill is None else fill.to(t.device, t.dtype).expand_as(t).clone()

    if isinstance(x, Mapping):
        as_dict = dict(x)
        as_dict[key] = filled(x[key])
        return as_dict
    if isinstance(x, (tuple, list)):
        as_list = list(x)
        as_list[key] = filled(x[key])
        return type(x)(as_list) if isinstance(x, tuple) else as_list
    out = x.clone()
    out[:, key] = filled(x[:, key])
    return out


def _to(x: Any, device: torch.device | None) -> Any:
    if device is None:
        return x
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(v.to(device) for v in x)
    return x.to(device)


def _view_means(loader: Iterable, sel: Mapping[str, Any], split: Callable) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in loader:
        x, _ = split(batch)
        for name, key in sel.items():
            part = _get(x, key).detach().double()
            s = part.sum(dim=0, keepdim=True)
            sums[name] = s if name not in sums else sums[name] + s
        n += int(_get(x, next(iter(sel.values()))).shape[0])
    if n == 0:
        raise ValueError("train_loader yielded no examples; cannot compute view means")
    return {k: v / n for k, v in sums.items()}


def _scores(model, loader, split, forward, device, ablate_key, fill) -> tuple[np.ndarray, np.ndarray]:
    outs, ys = [], []
    for batch in loader:
        x, y = split(batch)
        if ablate_key is not None:
            x = _replace(x, ablate_key, fill)
        out = forward(model, _to(x, device))
        outs.append(out.detach().float().cpu())
        ys.append(torch.as_tensor(y).detach().cpu())
    if not outs:
        raise ValueError("loader yielded no batches")
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


def _metric(name: str, y: np.ndarray, out: np.ndarray, threshold: float) -> float:
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if name == "accuracy":
        return accuracy(y, out, threshold=threshold if out.ndim == 1 else None)
    if out.ndim == 2:
        z = out - out.max(axis=1, keepdims=True)
        out = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return roc_auc(y, out)


def _rate(full: float, without: float) -> float:
    return (full - without) / full if full and np.isfinite(full) else float("nan")


@torch.no_grad()
def utilization(model: torch.nn.Module, loader: Iterable, *, views: Sequence[str] | Mapping[str, Any],
                ablate: str = "zero", train_loader: Iterable | None = None,
                split: Callable[[Any], tuple[Any, Any]] | None = None,
                forward: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
                metrics: Sequence[str] = ("accuracy", "auc"), threshold: float = 0.0,
                n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                device: torch.device | str | None = None) -> pd.DataFrame:
    """Per view and metric: the metric with all views, without the view, and the conditional
    utilization rate with a paired bootstrap interval (same resampled examples for both).

    ``ablate="mean"`` needs ``train_loader`` (the view's mean over the training set replaces it).
    The model is put in eval mode and restored afterwards. Columns: :data:`COLUMNS`, plus
    ``with_lo``/``with_hi``/``without_lo``/``without_hi``.
    """
    if ablate not in ("zero", "mean"):
        raise ValueError(f"ablate must be 'zero' or 'mean', got {ablate!r}")
    for m in metrics:
        if m not in ("accuracy", "auc"):
            raise ValueError(f"unknown metric {m!r}; use 'accuracy' and/or 'auc'")
    split = split or _default_split
    forward = forward or _default_forward
    first = next(iter(loader), None)
    if first is None:
        raise ValueError("loader yielded no batches")
    sel = _selectors(split(first)[0], views)
    means = None
    if ablate == "mean":
        if train_loader is None:
            raise ValueError("ablate='mean' needs train_loader= to compute each view's training-set mean")
        means = _view_means(train_loader, sel, split)
    device = torch.device(device) if device is not None else None
    was_training = model.training
    model.eval()
    try:
        full_out, y = _scores(model, loader, split, forward, device, None, None)
        ablated = {name: _scores(model, loader, split, forward, device, key,
                                 None if means is None else means[name])[0] for name, key in sel.items()}
    finally:
        model.train(was_training)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y))) if n_boot > 0 and len(y) > 1 else np.empty((0, len(y)), int)
    # the full model's metric and its bootstrap, once per metric (the same resamples serve every view)
    full = {m: _metric(m, y, full_out, threshold) for m in metrics}
    full_boot = {m: np.array([_metric(m, y[i], full_out[i], threshold) for i in idx], float) for m in metrics}
    wlo_whi = {m: percentile_interval(full_boot[m], level) for m in metrics}
    rows = []
    for name, out in ablated.items():
        for m in metrics:
            without = _metric(m, y, out, threshold)
            without_boot = np.array([_metric(m, y[i], out[i], threshold) for i in idx], float)
            rates = np.array([_rate(f, w) for f, w in zip(full_boot[m], without_boot)], float)
            (ulo, uhi), (wlo, whi) = percentile_interval(rates, level), wlo_whi[m]
            olo, ohi = percentile_interval(without_boot, level)
            rows.append({"view": name, "metric": m, "with_view": full[m], "without_view": without,
                         "utilization": _rate(full[m], without), "utilization_lo": ulo, "utilization_hi": uhi,
                         "n_examples": int(len(y)), "ablate": ablate, "with_lo": wlo, "with_hi": whi,
                         "without_lo": olo, "without_hi": ohi})
    return pd.DataFrame(rows)


def _clean_json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean_json(v.item())
    return v


def save_utilization(table: pd.DataFrame, run_dir: str | os.PathLike, *, split: str = "test",
                     **extra: Any) -> Path:
    """Write ``utilization.json`` into ``run_dir``: ``{"format": 1, "split": ..., **extra,
    "rows": [one object per row of ``table``]}``; NaN is written as null. ``utilization`` is
    computed from ``with_view``/``without_view`` when the table lacks it."""
    check_columns(table, _REQUIRED, "utilization table")
    if "utilization" not in table.columns:
        table = table.assign(utilization=[_rate(f, w) for f, w in zip(table["with_view"], table["without_view"])])
    rows = [{k: _clean_json(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    doc = {"format": 1, "split": split, **{k: _clean_json(v) for k, v in extra.items()}, "rows": rows}
    path = Path(run_dir) / UTILIZATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_utilization(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The utilization table of a run (``utilization.json``, else ``utilization.csv``), or None."""
    run_dir = Path(run_dir)
    js, csv = run_dir / UTILIZATION_FILE, run_dir / "utilization.csv"
    if js.exists():
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
            table = pd.DataFrame(doc["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{js}: not a utilization file ({exc})") from exc
        if "split" in doc and "split" not in table.columns:
            table["split"] = doc["split"]
    elif csv.exists():
        table = pd.read_csv(csv)
    else:
        return None
    check_columns(table, _REQUIRED, f"{run_dir}: the utilization file")
    if "utilization" not in table.columns:
        table["utilization"] = [_rate(f, w) for f, w in zip(table["with_view"], table["without_view"])]
    for c in ("utilization_lo", "utilization_hi"):
        if c not in table.columns:
            table[c] = np.nan
    return table.astype({c: float for c in ("with_view", "without_view", "utilization", "utilization_lo",
                                            "utilization_hi")})
