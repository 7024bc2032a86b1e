"""The TensorBoard export, read back with TensorBoard's own EventAccumulator and compared with the run's tables.

The expected values are computed here from the loaded per-tensor and per-step tables with plain sums (not with
dynamics.analysis); TensorBoard stores float32, hence the tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import dynamics
from dynamics.cli import main
from tests.harness import Setup, fresh_model, make_batches, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from dynamics.integrations.tensorboard import export_tensorboard  # noqa: E402

STEPS = 6
# clipped at every step, and step 2 skipped by the GradScaler (an inf loss): no per-view value there
SETUP = Setup("clip-scaler", lambda m: torch.optim.SGD(m.parameters(), lr=0.1), clip=0.05, loss_scale=2.0 ** 8,
              poison={2: math.inf})


def _run(path, seed: int) -> None:
    def factory(m, opt, scaler):
        return dynamics.attach(m, opt, views={"cc": m.cc, "mlo": m.mlo}, out=path, scaler=scaler, seed=seed)

    def after_step(step, rec):
        rec.log(loss=0.5 + step)
        if step % 2:
            rec.log(val_auc=0.1 * step)  # a scalar of some steps only

    train(fresh_model(seed), SETUP, make_batches(STEPS, seed=seed), recorder_factory=factory, after_step=after_step)


def _read(directory) -> dict[str, pd.Series]:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: pd.Series({e.step: e.value for e in events.Scalars(tag)}, dtype=float).sort_index()
            for tag in events.Tags()["scalars"]}


def _expected(run_dir) -> dict[str, pd.Series]:
    per_param, per_step = dynamics.load(run_dir)
    kept = per_step.loc[~per_step["skipped"], "step"]
    usable = per_param[per_param["step"].isin(kept)]
    sums = usable.groupby(["view", "step"], observed=True)[["grad_sq", "param_sq", "lca"]].sum().reset_index()
    cum = sums.assign(cum=sums.groupby("view", observed=True)["lca"].cumsum())
    cum["total"] = cum.groupby("step")["cum"].transform("sum")
    out = {}
    for view, part in cum.groupby("view", observed=True):
        part = part.set_index("step")
        out[f"grad_norm/{view}"] = np.sqrt(part["grad_sq"])
        out[f"learning_speed/{view}"] = part["grad_sq"] / part["param_sq"]
        out[f"loss_reduction/{view}"] = -part["cum"]
        decreased = part["total"] < 0  # a share of the loss reduction once there is one
        out[f"loss_reduction_share/{view}"] = (part["cum"] / part["total"])[decreased]
    steps = per_step.set_index("step")
    out["clip_factor"] = steps["clip_factor"].dropna()
    out["lr/0"] = steps["lr_0"]
    out["loss"] = steps["loss"].dropna()
    out["val_auc"] = steps["val_auc"].dropna()
    return out


def test_exported_scalars_equal_the_tables(tmp_path):
    for seed in (0, 1):
        _run(tmp_path / "runs" / f"base-seed{seed}", seed)
    written = export_tensorboard(tmp_path / "runs" / "*", tmp_path / "tb")
    assert written == [tmp_path / "tb" / "base-seed0", tmp_path / "tb" / "base-seed1"]
    for seed in (0, 1):
        got = _read(tmp_path / "tb" / f"base-seed{seed}")
        expected = _expected(tmp_path / "runs" / f"base-seed{seed}")
        assert set(got) == set(expected) == {f"{q}/{v}" for q in ("grad_norm", "learning_speed", "loss_reduction",
                                                                  "loss_reduction_share")
                                             for v in ("cc", "mlo", "shared")} | {"clip_factor", "lr/0", "loss",
                                                                                   "val_auc"}
        for tag, series in expected.items():
            assert got[tag].index.tolist() == series.index.tolist(), tag
            np.testing.assert_allclose(got[tag].to_numpy(), series.to_numpy(float), rtol=2e-6, err_msg=tag)
        assert 2 not in got["grad_norm/cc"].index  # the skipped step
        assert (got["clip_factor"] < 1).all() and len(got["clip_factor"]) == STEPS - 1


def test_cli_export_refuses_to_add_to_an_earlier_export(tmp_path, capsys):
    _run(tmp_path / "runs" / "a", 0)
    assert main(["export", str(tmp_path / "runs" / "a"), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "runs" / "a"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "already holds TensorBoard event files" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "runs" / "a"), "--tensorboard", str(tmp_path / "tb"), "--overwrite"]) == 0
    assert len(list((tmp_path / "tb" / "a").glob("events.out.tfevents.*"))) == 1
    assert len(_read(tmp_path / "tb" / "a")["loss"]) == STEPS  # replaced, not appended to
    assert main(["export", str(tmp_path / "nothing"), "--tensorboard", str(tmp_path / "tb")]) == 2
