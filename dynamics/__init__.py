"""dynamics: per-view training dynamics of multi-view PyTorch models.

Attach a recorder to a training run, load what it saw as tidy pandas tables, and turn them into imbalance
reports and figures. See README.md for the quantities and the table columns, ARCHITECTURE.md for the layout.

``import dynamics`` loads the recording and store side only (torch, numpy, pandas, pyarrow); the analysis,
the figures and the report (scipy, matplotlib, seaborn) load on first use of one of their names.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .record import InactiveRecorder, ProbeBatch, Quantity, Recorder, UpdateAlignment, attach, rows, view
from .store import RunStoreError, load, load_probe, load_runs, load_table, read_meta

# name -> (module, attribute or None for the module itself), imported when first used
_LAZY = {
    "analysis": ("dynamics.analysis", None),
    "balance": ("dynamics.balance", None),
    "metrics": ("dynamics.analysis.metrics", None),
    "plots": ("dynamics.report.plots", None),
    "report": ("dynamics.report", None),
    "norms": ("dynamics.analysis.derived", "norms"),
    "learning_speed": ("dynamics.analysis.derived", "learning_speed"),
    "shares": ("dynamics.analysis.derived", "shares"),
    "utilization": ("dynamics.analysis.utilization", "utilization"),
    "save_utilization": ("dynamics.analysis.utilization", "save_utilization"),
    "load_utilization": ("dynamics.analysis.utilization", "load_utilization"),
}

__all__ = ["attach", "Recorder", "InactiveRecorder", "view", "rows", "ProbeBatch", "Quantity", "UpdateAlignment",
           "load", "load_probe", "load_table", "load_runs", "read_meta", "RunStoreError", "norms", "learning_speed", "shares", "utilization",
           "save_utilization", "load_utilization", "analysis", "balance", "plots", "metrics", "report"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dynamics' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
