"""Two-step smoke runs of the whole pipeline: data → model → recorder → utilization → report."""
import json

import pandas as pd
import pytest

import dynamics
from analyses import reproduce
from analyses.train import TrainConfig, train


def test_two_step_phantom_run_records_and_evaluates(tmp_path):
    cfg = TrainConfig(dataset="phantom", condition="dropout", n_cases=60, image_size=32, width=0.25, epochs=1,
                      batch_size=16, max_steps=2, root=str(tmp_path / "data"), out=str(tmp_path / "run"))
    res = train(cfg, progress=False)
    assert res["steps"] == 2 and 0 <= res["test_auc"] <= 1
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert set(per_param["view"]) >= {"cc", "mlo"}
    assert sorted(per_param["step"].unique().tolist()) == [0, 1]
    for col in ("loss", "present_cc", "present_mlo", "val_auc", "test_auc"):
        assert col in per_step.columns, col
    assert (per_step["present_cc"].dropna() <= 16).all()
    util = json.loads((tmp_path / "run" / "utilization.json").read_text())
    assert {r["view"] for r in util["rows"]} == {"cc", "mlo"} and {r["ablate"] for r in util["rows"]} == {"zero", "mean"}
    assert (tmp_path / "run" / "best.pt").exists()


def test_reproduce_grid_smoke_mfeat(tmp_path):
    out = tmp_path / "fig"
    rc = reproduce.main(["--dataset", "mfeat", "--seeds", "2", "--max-steps", "2", "--epochs", "1",
                         "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-progress", "--jobs", "2"])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["condition"].unique()) == ["dropout", "separate", "shared"] and len(df) == 6
    assert (out / "report.md").exists() and (out / "test_auc.md").exists() and (out / "timing.json").exists()
    meta = dynamics.read_meta(tmp_path / "runs" / "mfeat" / "shared-seed1")
    assert meta["condition"] == "shared" and meta["seed"] == 1


def test_t_interval_matches_hand_value():
    m, lo, hi = reproduce.t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.302653 → half width 4.302653 / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5) and m - lo == pytest.approx(hi - m)


def test_two_step_shared_run_attributes_the_shared_column_to_both_views(tmp_path):
    cfg = TrainConfig(dataset="mfeat", condition="shared", epochs=1, batch_size=32, max_steps=2, hidden=8,
                      probe_every=1, out=str(tmp_path / "run"))
    res = train(cfg, progress=False)
    assert res["attribution"] == "attributed"
    per_param, per_step = dynamics.load(tmp_path / "run")
    body = per_param[per_param["attributed"]]
    assert set(body["view"]) == {"fou", "mor"}  # every shared tensor split into the two views' parts
    assert set(per_param.loc[~per_param["attributed"], "view"]) == {"fou", "mor", "shared"}  # stems, head
    assert any(c.startswith("probe_residual") for c in per_step.columns)
