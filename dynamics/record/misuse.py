"""Misuse that would make a recording silently wrong: refused at ``attach`` with an error naming the thing, or,
where it can only be seen during training, noted loudly (a warning and ``meta.json["notes"]``).

* an optimizer that holds none of the model's recorded parameters (every update would read as 0);
* a second recorder on a model (or a part of it, or a model containing it) or an optimizer that an open
  recorder already hooks: the two would count steps and gradients for each other;
* parameter groups added to the optimizer after ``attach`` (progressive unfreezing): the parameter table is
  fixed when the run is opened, so their tensors are not recorded; the recorder says so at the step they
  appear, and ``meta.json`` lists them under ``added_after_attach`` instead of calling them frozen.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import registry
from .guard import Notes


def _qualname(obj: object) -> str:
    return type(obj).__module__ + "." + type(obj).__qualname__


def refuse_second_recorder(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    found = registry.conflicting(model, optimizer)
    if found is None:
        return
    recorder, what = found
    if what == "optimizer":
        thing = f"optimizer {_qualname(optimizer)} is already recorded"
    elif recorder.model is model:
        thing = f"model {_qualname(model)} is already recorded"
    else:
        relation = "which contains it" if any(m is model for m in recorder.model.modules()) else "a part of it"
        thing = f"model {_qualname(model)} is already recorded (as part of {_qualname(recorder.model)}, {relation})"
    raise RuntimeError(f"{thing} by an open recorder writing {recorder.run_dir}: two recorders would count each "
                       f"other's steps and gradients; close() that one first")


def refuse_foreign_optimizer(optimizer: torch.optim.Optimizer, parameters: Sequence[dict]) -> None:
    """``parameters``: the run's parameter table, ``group`` -1 where the optimizer does not hold the tensor."""
    if parameters and all(p["group"] < 0 for p in parameters):
        raise ValueError(f"optimizer {_qualname(optimizer)} holds none of the model's {len(parameters)} recorded "
                         f"parameters (was it built for another model, or before the model was rebuilt?): every "
                         f"update would be recorded as 0; attach the optimizer that trains this model")


class GroupWatch:
    """Notices parameter groups added to the optimizer after attach (one length check per step)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, notes: Notes) -> None:
        self._optimizer, self._notes = optimizer, notes
        self._count = len(optimizer.param_groups)
        self._names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.added: list[dict] = []

    def check(self, step: int) -> None:
        groups = self._optimizer.param_groups
        if len(groups) == self._count:
            return
        for index in range(self._count, len(groups)):
            names = [self._names.get(id(p), "(not in the model)") for p in groups[index]["params"]]
            self.added.append({"group": index, "step": step, "parameters": names})
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            self._notes.add(f"parameter group {index} ({shown}) was added to the optimizer after attach: it is not "
                            f"recorded (the parameter table is fixed when the run is opened; attach after "
                            f"adding it, e.g. in a new run)", step, warn=True)
        self._count = len(groups)

    def describe(self, meta: dict) -> None:
        """In ``meta``: the added groups, and their tensors no longer listed as frozen."""
        if not self.added:
            return
        meta["added_after_attach"] = self.added
        added = {n for group in self.added for n in group["parameters"]}
        meta["frozen"] = [n for n in meta.get("frozen", []) if n not in added]
