"""dynamics: per-view training dynamics of multi-view PyTorch models.

Attach a recorder to a training run, load what it saw as tidy pandas tables, and turn them into imbalance
reports and figures. See README.md for the quantities and the table columns.
"""
__version__ = "0.1.0"

from . import analysis, metrics, plots
from .attribution import rows, view
from .probe import ProbeBatch
from .recorder import InactiveRecorder, Recorder, attach
from .store import RunStoreError, load, load_probe, load_runs, read_meta
from .tables import learning_speed, norms, shares
from .utilization import load_utilization, save_utilization, utilization

__all__ = ["attach", "Recorder", "InactiveRecorder", "view", "rows", "ProbeBatch", "load", "load_probe", "load_runs", "read_meta", "RunStoreError", "norms",
           "learning_speed", "shares", "utilization", "save_utilization", "load_utilization", "analysis", "plots",
           "metrics"]
