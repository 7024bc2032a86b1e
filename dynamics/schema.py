"""Every name the stages share: tables, columns, buffer rows, rules, defaults and the schema version.

The recorder writes these names, the store keeps them, the analysis and the report read them. They are spelled
here once; every other module imports them. Pure constants: no torch, no pandas.
"""
from __future__ import annotations

SCHEMA_VERSION = 2               # 2: flushes committed by records in commits/, parts carry the run id
META_FILE = "meta.json"
TABLES = ("params", "steps", "attribution", "probe")
COMMITS = "commits"              # the folder of commit records: a flush (or a compaction) is visible once its record is
LOCK_FILE = "writer.lock"        # the writer lock: owner pid, host, boot and process start
PARAM_ID = "param_id"            # a part's tensor column: the index into meta.json's parameter table


# the per-tensor quantities a run stores (additive over tensors, views, micro-batches and processes)
QUANTITIES = ("grad_sq", "param_sq", "update_sq", "lca")
# rows of the recorder's device buffer: the stored quantities, then the optimizer's ‖g‖² (for the clip factor)
BUFFER_ROWS = (*QUANTITIES, "pre_sq")
GRAD_SQ, PARAM_SQ, UPDATE_SQ, LCA, PRE_SQ = range(len(BUFFER_ROWS))
# rows of the attribution buffer, per view and shared tensor: ‖g_v‖², g_v·Δθ, g_v·(g − g_v)
ATTRIBUTION_ROWS = ("grad_sq", "lca", "cross")

# the probe's integration rules of the gradient along θ_t → θ_{t+1} (first order, trapezoid, Simpson)
RULES = ("first", "trapezoid", "simpson")
PROBE_PREFIX = "probe_"
PROBE_CHANGE = "probe_change"
PROBE_LOSSES = ("probe_loss_before", "probe_loss_after")


def probe_residual(rule: str) -> str:
    """The per-step column of a rule's residual: measured probe loss change minus Σ lca_<rule>."""
    return f"{PROBE_PREFIX}residual_{rule}"


def probe_lca(rule: str) -> str:
    """The per-tensor column of the probe's lca by one rule."""
    return f"lca_{rule}"


# the per-step table: these first, then one learning rate per parameter group, then the user's scalars
STEP_COLUMNS = ("step", "recorded", "skipped", "clip_factor")
LR_PREFIX = "lr_"
RUN_COLUMNS = ("run", "condition", "seed")  # added by load_runs
RESERVED_SCALARS = frozenset(STEP_COLUMNS) | frozenset(RUN_COLUMNS)


def lr_column(group: int) -> str:
    """The per-step column of parameter group ``group``'s learning rate."""
    return f"{LR_PREFIX}{group}"


def is_lr_column(name: str) -> bool:
    return str(name).startswith(LR_PREFIX)


# the per-param table a loaded run has (per tensor and recorded step; per view for attributed tensors)
PARAM_KEYS = ("step", "param", "view", "layer", "depth")
PARAM_FLAGS = ("finite", "has_grad", "attributed")

# defaults
SHARED = "shared"                # the group of parameters in no view (fusion, head)
DEFAULT_CONDITION = "default"    # the condition of a run that names none

# the columns of each table's Parquet parts and their Arrow types; a steps part has further float64 columns
# (learning rates, probe losses and residuals, logged scalars)
PART_COLUMNS = {
    "params": (("step", "int64"), (PARAM_ID, "int32"), *((q, "double") for q in QUANTITIES),
               ("finite", "bool"), ("has_grad", "bool")),
    "attribution": (("step", "int64"), (PARAM_ID, "int32"), ("view", "string"),
                    *((q, "double") for q in ATTRIBUTION_ROWS)),
    "probe": (("step", "int64"), (PARAM_ID, "int32"), *((probe_lca(r), "double") for r in RULES)),
    "steps": tuple(zip(STEP_COLUMNS, ("int64", "bool", "bool", "double"))),
}

# per-step scalars the interventions of dynamics.balance log into the run (one column per view)
PRESENT_PREFIX = "present_"                  # modality dropout: samples of the batch in which the view was kept
REBALANCED_PREFIX = "rebalanced_"            # re-balancing: 1 on steps whose fusion input favoured the view, else 0
REBALANCE_SPEED_PREFIX = "rebalance_speed_"  # re-balancing: the view's accumulated learning speed, at check steps
OGM_COEF_PREFIX = "ogm_coef_"                # OGM-GE: the coefficient k of the view's branch gradient
OGM_SCORE_PREFIX = "ogm_score_"              # OGM-GE: the view's unimodal score (mean probability of the target)
BALANCE_PREFIXES = (PRESENT_PREFIX, REBALANCED_PREFIX, REBALANCE_SPEED_PREFIX, OGM_COEF_PREFIX, OGM_SCORE_PREFIX)


def balance_column(prefix: str, view: str) -> str:
    """The per-step column of one intervention quantity (a prefix above) for one view."""
    if prefix not in BALANCE_PREFIXES:
        raise ValueError(f"unknown intervention column prefix {prefix!r}; choose from {BALANCE_PREFIXES}")
    return f"{prefix}{view}"
