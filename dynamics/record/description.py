"""What a run's ``meta.json`` says about its recording: set-up, parameter table, library versions. JSON only."""
from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..schema import SCHEMA_VERSION
from . import schedules
from .measurements import StepMeasurements
from .views import ViewAssignment

if TYPE_CHECKING:
    from .options import RecordingOptions, RunSpec


def json_safe(value: Any) -> Any:
    """Hyper-parameters and user config as JSON (tensors as numbers, anything exotic as its repr)."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return repr(value)


def library_versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers, for the reader of a run years later."""
    import pyarrow
    from .. import __version__
    return {"dynamics": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "pyarrow": pyarrow.__version__}


def describe_run(model: nn.Module, optimizer: torch.optim.Optimizer, assignment: ViewAssignment,
                 parameters: list[dict], options: "RecordingOptions", run: "RunSpec", created: str | None,
                 wrappers: Sequence[str] = ()) -> dict:
    """The metadata written at attach (the recorder adds status, notes and errors at close). ``wrappers``:
    the classes around the recorded optimizer that attach unwrapped (outermost first). Each quantity adds
    what it describes, and the tables of all of them are declared (so the run reads back without their code)."""
    described: dict = {"probe": None}
    for quantity in options.quantities:
        described.update(json_safe(dict(quantity.describe())))
    tables = [*StepMeasurements.tables, *(spec for q in options.quantities for spec in q.tables)]
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "views": assignment.views,
        "shared_name": assignment.shared_name,
        "parameters": parameters,
        "frozen": assignment.frozen,
        "not_in_optimizer": [p["name"] for p in parameters if p["group"] < 0],
        "model": type(model).__module__ + "." + type(model).__qualname__,
        "optimizer": {"class": type(optimizer).__module__ + "." + type(optimizer).__qualname__,
                      "defaults": json_safe(optimizer.defaults),
                      "groups": [json_safe({k: v for k, v in g.items() if k != "params"})
                                 for g in optimizer.param_groups],
                      "wrappers": list(wrappers)},
        "amp_scaler": options.scaler is not None,
        "schedule": schedules.describe(options.every),
        **described,
        "tables": {spec.name: spec.as_record() for spec in tables},
        "flush_every": options.flush_every,
        "config": json_safe(dict(run.config or {})),
        "seed": run.seed,
        "condition": run.condition,
        "versions": library_versions(),
        "host": platform.node(),
        "gradient": "after accumulation, unscaled by the GradScaler, before clipping (see notes)",
    }
