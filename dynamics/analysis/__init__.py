"""Analysis: pure functions on the tidy tables a run store returns.

cleaning (which rows count), derived (norms, learning speeds, shares: derived after exact sums), imbalance
(per-view and matched-layer statistics), scalars (logged values, probe residuals), metrics (AUC, accuracy,
intervals) and utilization (the conditional utilization rate, which evaluates a model).
"""
from ..schema import QUANTITIES, RULES as PROBE_RULES, SHARED  # noqa: F401 - names of the old dynamics.analysis
from .cleaning import PHASES, check_columns, clean, exclusions, view_order, with_run
from .derived import learning_speed, norms, shares, sums
from .imbalance import (conditional_learning_speed, imbalance_summary, layer_dynamics, matched_depth,
                        matched_layers, mean_ci, paired_test, run_summary, view_dynamics)
from .scalars import probe_residuals, user_metrics

__all__ = [
    "PHASES", "clean", "exclusions", "view_order", "view_dynamics", "layer_dynamics", "matched_depth",
    "matched_layers", "paired_test", "conditional_learning_speed", "run_summary", "imbalance_summary",
    "user_metrics", "probe_residuals", "mean_ci", "check_columns", "with_run", "norms", "sums", "learning_speed", "shares",
    "QUANTITIES", "PROBE_RULES", "SHARED",
]
