"""dynamics: per-view training dynamics of multi-view PyTorch models.

Attach a recorder to a training run, load what it saw as tidy pandas tables, and turn them into imbalance
reports and figures. See README.md for the quantities and the table columns.
"""
__version__ = "0.1.0"

from .recorder import Recorder, attach
from .store import RunStoreError, load, load_runs, read_meta
from .tables import learning_speed, norms, shares

__all__ = ["attach", "Recorder", "load", "load_runs", "read_meta", "RunStoreError", "norms", "learning_speed",
           "shares"]
