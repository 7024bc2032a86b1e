"""What a trained run yields besides its test metrics: each view's whole-run dynamics read back from the run
directory (:func:`run_dynamics`) and its test-set conditional utilization (:func:`write_utilization`)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

import dynamics

from analyses.datasets.common import TwoViewSplits
from analyses.models import TwoViewModel


def view_parameters(model: TwoViewModel) -> dict[str, int]:
    """Trainable parameters in each view's own column (``shared``: the shared column, plus the view's stem)."""
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    if model.condition != "shared":
        return {v: count(getattr(model, f"{v}_column")) for v in model.views}
    return {v: count(model.column) + (count(getattr(model, f"{v}_stem")) if hasattr(model, f"{v}_stem") else 0)
            for v in model.views}


def run_dynamics(run_dir: Path, model: TwoViewModel) -> dict:
    """Per view over the whole recorded run: Σ‖g‖² over steps and tensors, the loss reduction (−Σ lca), its
    share of all groups' loss reduction, and the view's parameter count (for a per-parameter gradient norm:
    views of different widths are not comparable by raw norms). Read back from the run directory."""
    from dynamics.analysis.cleaning import clean

    per_param, per_step = dynamics.load(run_dir)
    df = clean(per_param, per_step)
    sums = df.groupby(df["view"].astype(str), observed=True)[["grad_sq", "lca"]].sum()
    total = -float(sums["lca"].sum())
    counts = view_parameters(model)
    return {v: {"grad_sq": float(sums.loc[v, "grad_sq"]), "loss_reduction": -float(sums.loc[v, "lca"]),
                "share": -float(sums.loc[v, "lca"]) / total if total > 0 else math.nan, "n_params": counts[v]}
            for v in model.views if v in sums.index}


UTILIZATION_CASES = 1000  # test cases utilization reads (its 6 passes were a third of a 4,000-case phantom run)


def write_utilization(model: TwoViewModel, splits: TwoViewSplits, run_dir: Path, device: str,
                      n_boot: int = 500, n_cases: int = UTILIZATION_CASES) -> dict:
    """Test-set conditional utilization of each view (zeroed, and replaced by its training mean) on the first
    ``n_cases`` test cases, written to ``run_dir/utilization.json`` by
    :func:`dynamics.analysis.utilization.save_utilization`; returns a summary."""
    from dynamics.analysis.utilization import save_utilization, utilization

    test = splits.test.head(n_cases)
    tables = [utilization(model, test.loader(256), views=list(model.views), ablate=ablate,
                          train_loader=splits.train.loader(512), n_boot=n_boot, device=device)
              for ablate in ("zero", "mean")]
    table = pd.concat(tables, ignore_index=True)
    save_utilization(table, run_dir, split="test")
    auc = table[table["metric"] == "auc"]
    return {f"{r.ablate}/{r.view}": float(r.utilization) for r in auc.itertuples()}
