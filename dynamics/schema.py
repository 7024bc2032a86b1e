"""Every name the stages share: tables, columns, buffer rows, rules, defaults and the schema version.

The recorder writes these names, the store keeps them, the analysis and the report read them. They are spelled
here once; every other module imports them. Pure constants: no torch, no pandas.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

SCHEMA_VERSION = 2               # 2: flushes committed by records in commits/, parts carry the run id
META_FILE = "meta.json"
PARAMS, STEPS, ATTRIBUTION, PROBE = "params", "steps", "attribution", "probe"  # the built-in tables
COMMITS = "commits"              # the folder of commit records: a flush (or a compaction) is visible once its record is
QUARANTINE = "quarantine"        # the folder of parts that verify but that no commit record names (moved, never deleted)
LOCK_FILE = "writer.lock"        # the writer lock: owner pid, host, boot and process start
PARAM_ID = "param_id"            # a part's tensor column: the index into meta.json's parameter table
# meta.json: what the attaches before a resume said (their errors and notes; a resumed run's own are its last
# attach's), and the prefix of the error that records the training loop's own exception, not the recorder's
BEFORE_RESUME = "before_resume"
TRAINING_RAISED = "training raised"


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


# ------------------------------------------------------------------------------------------------- tables
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_RUN_FOLDERS = frozenset({COMMITS, QUARANTINE})


def is_table_name(name: str) -> bool:
    """A name a table (and its folder in the run directory) may have."""
    return isinstance(name, str) and bool(_TABLE_NAME.match(name)) and name not in _RUN_FOLDERS
_ARROW_TYPES = ("int64", "int32", "double", "bool", "string")
_REDUCTIONS = ("sum", "max")


@dataclass(frozen=True)
class TableSpec:
    """What a recorded quantity declares about the table it writes, and all the store knows of it.

    ``columns``: (name, Arrow type) of its Parquet parts, in order; ``key``: the columns that identify a row
    (no key twice in a run); ``dense``: every recorded tensor at every step a part holds; ``open``: further
    float64 per-step columns are allowed (the steps table's learning rates, probe losses and logged scalars);
    ``reduce``: how a value combines across processes, shards and micro-batches (``sum``: additive; ``max``).
    A quantity's own table is a per-tensor table (key step and tensor); its per-step values go into the steps
    table. Built-in tables are declared below; a plug-in's declaration is written into ``meta.json``, so that
    a run is read back without the code that recorded it.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...] = ("step", PARAM_ID)
    dense: bool = True
    open: bool = False
    reduce: str = "sum"

    def __post_init__(self) -> None:
        if not is_table_name(self.name):
            raise ValueError(f"table name {self.name!r}: use 1-40 lower-case letters, digits or _, starting with a "
                             f"letter, other than the run directory's own folders {sorted(_RUN_FOLDERS)}")
        names = [c for c, _ in self.columns]
        bad = [f"{c}: {t}" for c, t in self.columns if t not in _ARROW_TYPES]
        if bad:
            raise ValueError(f"table {self.name!r}: column type(s) {bad} not among {_ARROW_TYPES}")
        if len(set(names)) != len(names) or not set(self.key) <= set(names) or names[:1] != ["step"]:
            raise ValueError(f"table {self.name!r}: columns must be unique, start with 'step' and hold the key "
                             f"{self.key}")
        if self.reduce not in _REDUCTIONS:
            raise ValueError(f"table {self.name!r}: reduce must be one of {_REDUCTIONS}, got {self.reduce!r}")

    @property
    def values(self) -> tuple[str, ...]:
        """The columns that are not the key."""
        return tuple(c for c, _ in self.columns if c not in self.key)

    def as_record(self) -> dict:
        return {"columns": [list(c) for c in self.columns], "key": list(self.key), "dense": self.dense,
                "open": self.open, "reduce": self.reduce}

    @classmethod
    def from_record(cls, name: str, record: Mapping) -> "TableSpec":
        return cls(name, tuple((str(c), str(t)) for c, t in record["columns"]), tuple(record["key"]),
                   bool(record["dense"]), bool(record["open"]), str(record["reduce"]))


def quantity_table(name: str, *values: str, reduce: str = "sum") -> TableSpec:
    """A plug-in quantity's per-tensor table: step, param_id, then its float64 ``values``."""
    return TableSpec(name, (("step", "int64"), (PARAM_ID, "int32"), *((v, "double") for v in values)), reduce=reduce)


BUILTIN_TABLES: dict[str, TableSpec] = {
    PARAMS: TableSpec(PARAMS, (("step", "int64"), (PARAM_ID, "int32"), *((q, "double") for q in QUANTITIES),
                               ("finite", "bool"), ("has_grad", "bool"))),
    STEPS: TableSpec(STEPS, tuple(zip(STEP_COLUMNS, ("int64", "bool", "bool", "double"))), key=("step",),
                     dense=False, open=True),
    ATTRIBUTION: TableSpec(ATTRIBUTION, (("step", "int64"), (PARAM_ID, "int32"), ("view", "string"),
                                         *((q, "double") for q in ATTRIBUTION_ROWS)),
                           key=("step", PARAM_ID, "view"), dense=False),
    PROBE: quantity_table(PROBE, *(probe_lca(r) for r in RULES)),
}
TABLES = tuple(BUILTIN_TABLES)
# the columns of each built-in table's Parquet parts and their Arrow types
PART_COLUMNS = {name: spec.columns for name, spec in BUILTIN_TABLES.items()}


def tables_of(meta: Mapping | None) -> dict[str, TableSpec]:
    """Every table a run may hold: the built-in ones and the plug-ins its ``meta.json`` declares."""
    declared = (meta or {}).get("tables") or {}
    out = dict(BUILTIN_TABLES)
    for name, record in declared.items():
        if name in BUILTIN_TABLES:
            continue
        try:
            out[name] = TableSpec.from_record(name, record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"meta.json declares table {name!r} malformed ({exc})") from None
    return out


# per-step scalars the interventions of dynamics.balance log into the run (one column per view)
PRESENT_PREFIX = "present_"                  # modality dropout: samples of the batch in which the view was kept
REBALANCED_PREFIX = "rebalanced_"            # re-balancing: 1 on steps whose fusion input favoured the view, else 0
REBALANCE_SPEED_PREFIX = "rebalance_speed_"  # re-balancing: the view's accumulated learning speed, at check steps
OGM_COEF_PREFIX = "ogm_coef_"                # OGM-GE: the coefficient k of the view's branch gradient
OGM_SCORE_PREFIX = "ogm_score_"              # OGM-GE: the view's unimodal score (mean probability of the target)
BALANCE_PREFIXES = (PRESENT_PREFIX, REBALANCED_PREFIX, REBALANCE_SPEED_PREFIX, OGM_COEF_PREFIX, OGM_SCORE_PREFIX)
# the kinds of intervention, each with the prefix of the per-step decision the report draws for it
DROPOUT_KIND, REBALANCE_KIND, OGM_KIND = "modality dropout", "re-balancing", "OGM-GE"
DECISION_PREFIX = {REBALANCE_KIND: REBALANCED_PREFIX, OGM_KIND: OGM_COEF_PREFIX, DROPOUT_KIND: PRESENT_PREFIX}


def balance_column(prefix: str, view: str) -> str:
    """The per-step column of one intervention quantity (a prefix above) for one view."""
    if prefix not in BALANCE_PREFIXES:
        raise ValueError(f"unknown intervention column prefix {prefix!r}; choose from {BALANCE_PREFIXES}")
    return f"{prefix}{view}"
