"""The public face of the package, pinned: every name a user script may rely on, with its parameters.

A change here is a change users feel: renaming a keyword, dropping a name, or making ``import dynamics`` pull
in the plotting stack. The expected signatures are written out by hand, not read from the code.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dynamics

REPO = Path(__file__).resolve().parents[1]

# name -> parameter names in order, "*" marking where keyword-only parameters begin
FUNCTIONS = {
    "attach": ["model", "optimizer", "views", "*", "out", "shared_name", "every", "flush_every", "scaler", "config",
               "seed", "condition", "resume", "attribute", "probe", "probe_every", "parts"],
    "view": ["name"],
    "rows": ["fn", "views"],
    "ProbeBatch": ["inputs", "targets", "loss_fn", "train_mode"],
    "load": ["run_dir", "*", "split_shared"],
    "load_probe": ["run_dir"],
    "load_table": ["run_dir", "table"],
    "UpdateAlignment": [],
    "load_runs": ["paths_or_glob", "*", "split_shared"],
    "read_meta": ["run_dir"],
    "norms": ["per_param"],
    "learning_speed": ["per_param", "by", "per_step"],
    "shares": ["per_param", "by", "per", "per_step"],
    "utilization": ["model", "loader", "*", "views", "ablate", "train_loader", "split", "forward", "metrics",
                    "threshold", "n_boot", "level", "seed", "device"],
    "save_utilization": ["table", "run_dir", "*", "split", "**extra"],
    "load_utilization": ["run_dir"],
}
MODULES = {
    "analysis": ["clean", "exclusions", "view_order", "view_dynamics", "layer_dynamics", "matched_depth",
                 "matched_layers", "paired_test", "conditional_learning_speed", "run_summary", "imbalance_summary",
                 "user_metrics", "probe_residuals", "mean_ci", "check_columns"],
    "plots": ["publication_style", "figsize", "view_palette", "view_lines", "grad_norm_plot",
              "loss_reduction_plot", "share_area_plot", "ratio_heatmap", "condition_plot", "dynamics_facets",
              "save_figure"],
    "balance": ["modality_dropout", "ModalityDropout", "rebalance", "ogm_ge", "FusionInput", "dropout_masks",
                "decide", "scores", "coefficients", "unimodal_outputs"],
    "metrics": ["roc_auc", "accuracy", "bootstrap_ci", "average_ranks", "t_half_width", "percentile_interval"],
    "report": ["ReportData", "load_report_data", "summary_table", "format_summary", "findings", "build_report",
               "report"],
}
RECORDER_METHODS = ["log", "close", "coverage", "step", "__enter__", "__exit__"]
# the parameters of the interventions, written out by hand like FUNCTIONS
BALANCE = {
    "modality_dropout": ["fusion", "views", "*", "p", "weights", "generator"],
    "ModalityDropout": ["views", "p", "*", "weights", "generator"],
    "rebalance": ["fusion", "optimizer", "branches", "*", "widths", "threshold", "every", "steps", "warmup", "mode",
                  "seed", "windows", "horizon"],
    "ogm_ge": ["fusion", "optimizer", "branches", "*", "loss", "widths", "alpha", "noise", "start", "stop", "rule",
               "select", "seed", "unimodal"],
}


def _parameters(obj) -> list[str]:
    out, keyword_only = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not keyword_only:
            out.append("*")
            keyword_only = True
        out.append(("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else "") + p.name)
    return out


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_public_function_keeps_its_parameters(name):
    assert _parameters(getattr(dynamics, name)) == FUNCTIONS[name]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_public_module_keeps_its_names(name):
    module = getattr(dynamics, name)
    missing = [n for n in MODULES[name] if not callable(getattr(module, n, None))]
    assert not missing, f"dynamics.{name} lost {missing}"


@pytest.mark.parametrize("name", sorted(BALANCE))
def test_interventions_keep_their_parameters(name):
    assert _parameters(getattr(dynamics.balance, name)) == BALANCE[name]


def test_intervention_handles_are_removable_context_managers():
    for cls in (dynamics.balance.DropoutHandle, dynamics.balance.Rebalance, dynamics.balance.OGMGE):
        assert all(callable(getattr(cls, m, None)) for m in ("remove", "__enter__", "__exit__")), cls.__name__


def test_every_listed_name_resolves_and_nothing_else_is_promised():
    expected = set(FUNCTIONS) | set(MODULES) | {"Recorder", "InactiveRecorder", "RunStoreError", "Quantity"}
    assert set(dynamics.__all__) == expected
    for name in dynamics.__all__:
        assert getattr(dynamics, name) is not None
    assert issubclass(dynamics.RunStoreError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        dynamics.nonexistent  # noqa: B018


def test_recorder_handles_keep_their_methods():
    for cls in (dynamics.Recorder, dynamics.InactiveRecorder):
        missing = [m for m in RECORDER_METHODS if m != "step" and not callable(getattr(cls, m, None))]
        assert not missing, f"{cls.__name__} lost {missing}"
    assert isinstance(inspect.getattr_static(dynamics.Recorder, "step"), property)


def test_import_loads_neither_plotting_nor_scipy():
    """A training script pays for torch, numpy, pandas and pyarrow only; the CLI's --help likewise."""
    code = ("import sys, dynamics, dynamics.cli; "
            "print(','.join(m for m in ('matplotlib', 'seaborn', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
    # and they do load on first use
    code = "import sys, dynamics; dynamics.plots; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
