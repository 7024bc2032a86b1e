"""The reproduction's conditions by name: what each trains, and the grid they form.

| name | what trains |
|---|---|
| ``only-<view>`` | one column on that view alone, with the same head (a single-view model) |
| ``separate`` | one column per view, late fusion by concatenation (the paper's view-wise model) |
| ``shared`` | one column applied to every view (shared weights), first view called first |
| ``shared-swapped`` | the same with the views called in reverse order (the control for attribution by call order) |
| ``dropout`` | separate columns with modality dropout at the run's ``p_drop`` |
| ``dropout-<p>`` | the same at rate ``p`` (for example ``dropout-0.5``) |
| ``rebalance`` | separate columns, conditional-learning-speed re-balancing (``dynamics.balance.rebalance``) |
| ``rebalance-t<x>`` | re-balancing at threshold ``x`` on log10 of the speed ratio (the threshold sweep) |
| ``rebalance-random`` | its control, dose-matched: as many windows as the guided run of the same seed, at random steps for random views |

``ensemble`` is not trained: it is the late-fusion ensemble of the ``only-<view>`` models of one seed (the sum
of their logits, which is the optimal combination when the views are independent given the label), the
ceiling a jointly trained model should reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ARCHITECTURES = ("separate", "shared", "dropout")
ENSEMBLE = "ensemble"
REFERENCE = "separate"
SINGLE_PREFIX = "only-"
JOINT = ("separate", "shared", "shared-swapped", "dropout-0.25", "dropout-0.5", "rebalance", "rebalance-random")
THRESHOLDS = (0.001, 0.03, 0.1, 0.3, 1.0)  # the threshold sweep (beside the authors' 0.01) on one fast task
DEFAULT_THRESHOLD = 0.01
# The reproduction's statistical plan, shared by findings, claims and power: tests at α (Holm-corrected), 80%
# power, and the smallest test-AUC difference worth claiming, which every comparison must be able to detect
ALPHA, POWER, MDD_TARGET = 0.05, 0.8, 0.02


@dataclass(frozen=True)
class Condition:
    """One named condition, resolved: the architecture, the views it sees, its dropout rate and re-balancing."""

    name: str
    architecture: str                # one of ARCHITECTURES
    views: tuple[str, ...]           # the views the model reads (one for a single-view model)
    p_drop: float = 0.0
    rebalance: str | None = None     # "guided" or "random"
    threshold: float = 0.01          # re-balancing's threshold on log10 of the speed ratio


def parse_condition(name: str, views: Sequence[str], p_drop: float = 0.25) -> Condition:
    """Resolve ``name`` for a data set with ``views``; ``p_drop`` is the rate of a plain ``dropout``.

    Raises ValueError naming the condition, and the valid names, for anything else.
    """
    views = tuple(views)
    if name.startswith(SINGLE_PREFIX):
        view = name[len(SINGLE_PREFIX):]
        if view not in views:
            raise ValueError(f"condition {name!r}: view {view!r} is not one of this data set's views {list(views)}")
        return Condition(name, "separate", (view,))
    if name in ("separate", "shared"):
        return Condition(name, name, views)
    if name == "shared-swapped":
        return Condition(name, "shared", views[::-1])
    if name == "dropout" or name.startswith("dropout-"):
        rate = p_drop if name == "dropout" else _rate(name)
        return Condition(name, "dropout", views, p_drop=rate)
    if name in ("rebalance", "rebalance-random"):
        return Condition(name, "separate", views, rebalance="random" if name.endswith("random") else "guided")
    if name.startswith("rebalance-t"):
        return Condition(name, "separate", views, rebalance="guided", threshold=_number(name, "rebalance-t"))
    valid = [f"{SINGLE_PREFIX}{v}" for v in views] + ["separate", "shared", "shared-swapped", "dropout",
                                                      "dropout-<p>", "rebalance", "rebalance-t<x>",
                                                      "rebalance-random"]
    hint = " (it is computed from the single-view runs, not trained)" if name == ENSEMBLE else ""
    raise ValueError(f"unknown condition {name!r}{hint}; choose from {valid}")


def _number(name: str, prefix: str) -> float:
    try:
        value = float(name[len(prefix):])
    except ValueError:
        raise ValueError(f"condition {name!r}: the value after {prefix!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"condition {name!r}: the value after {prefix!r} must be >= 0")
    return value


def _rate(name: str) -> float:
    try:
        rate = float(name[len("dropout-"):])
    except ValueError:
        raise ValueError(f"condition {name!r}: the dropout rate after 'dropout-' is not a number") from None
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"condition {name!r}: the dropout rate must lie in (0, 1]")
    return rate


def single_view_conditions(views: Sequence[str]) -> list[str]:
    """``only-<view>`` for every view, in the data set's order."""
    return [f"{SINGLE_PREFIX}{v}" for v in views]


def grid(views: Sequence[str]) -> list[str]:
    """Every trained condition of the reproduction: the single views first, then the joint models."""
    return single_view_conditions(views) + list(JOINT)


def sweep() -> list[str]:
    """The re-balancing threshold sweep's conditions (beside ``rebalance`` at the default threshold)."""
    return [f"rebalance-t{t:g}" for t in THRESHOLDS]
