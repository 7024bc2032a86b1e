"""Analysis: pure functions on the tidy tables a run store returns.

cleaning (which rows count), derived (norms, learning speeds, shares: derived after exact sums), imbalance
(per-view and matched-layer dynamics), summaries (per run first, then across runs), inference (intervals and
tests over runs), comparisons (conditions against a reference), scalars (logged values, probe residuals), metrics (AUC, accuracy,
intervals), utilization (the conditional utilization rate, which evaluates a model) and sweep (many runs reduced
one at a time to the per-view sums a report needs).
"""
from ..schema import QUANTITIES, RULES as PROBE_RULES, SHARED  # noqa: F401 - names of the old dynamics.analysis
from .cleaning import PHASES, check_columns, clean, exclusions, view_order, with_run
from .derived import learning_speed, norms, shares, sums
from .comparisons import compare_conditions
from .imbalance import (conditional_learning_speed, layer_dynamics, matched_depth, matched_layers, matched_pairs,
                        paired_test, per_run_layer_ratio, view_dynamics, view_dynamics_from_sums, view_pairs)
from .inference import INTERVAL, difference, holm, min_detectable_difference, permutation_test, sign_flip_test, t_interval
from .summaries import imbalance_summary, matched_layer_means, mean_ci, pair_runs, run_groups, run_summary, view_shares
from .sweep import Sweep, aggregate_runs
from .scalars import probe_residuals, user_metrics

__all__ = [
    "PHASES", "clean", "exclusions", "view_order", "view_dynamics", "layer_dynamics", "matched_depth",
    "matched_layers", "matched_pairs", "view_pairs", "per_run_layer_ratio", "paired_test",
    "conditional_learning_speed", "run_summary", "run_groups", "matched_layer_means", "pair_runs", "view_shares",
    "imbalance_summary", "view_dynamics_from_sums", "Sweep", "aggregate_runs",
    "compare_conditions", "INTERVAL", "t_interval", "sign_flip_test", "permutation_test", "difference",
    "min_detectable_difference", "holm",
    "user_metrics", "probe_residuals", "mean_ci", "check_columns", "with_run", "norms", "sums", "learning_speed", "shares",
    "QUANTITIES", "PROBE_RULES", "SHARED",
]
