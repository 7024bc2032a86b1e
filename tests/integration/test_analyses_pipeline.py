"""Two-step smoke runs of the whole pipeline: data → model → recorder → utilization → report."""
import json

import pandas as pd

import dynamics
from analyses import findings as F
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


def test_reproduce_grid_smoke_mfeat(tmp_path, monkeypatch):
    out = tmp_path / "fig"
    rc = reproduce.main(["--dataset", "mfeat", "--seeds", "2", "--max-steps", "2", "--epochs", "1",
                         "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-progress", "--jobs", "2"])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    expected = ["only-fou", "only-mor", "separate", "shared", "shared-swapped", "dropout-0.25", "dropout-0.5",
                "rebalance", "rebalance-random", "ensemble"]
    assert list(dict.fromkeys(df["condition"])) == expected and len(df) == 2 * len(expected)
    for name in ("report.md", "test_auc.md", "timing.json", "findings.json", "findings.md", "shares.csv"):
        assert (out / name).exists(), name
    found = json.loads((out / "findings.json").read_text())
    assert found["seeds"] == [0, 1] and set(found["conditions"]) == set(expected[2:-1])
    assert found["conditions"]["shared"]["vs_separate"]["design"].startswith("paired t by seed (2 pairs)")
    assert found["checks"] == [] and found["passed"]  # mfeat is reported, not gated
    meta = dynamics.read_meta(tmp_path / "runs" / "mfeat" / "shared-seed1")
    assert meta["condition"] == "shared" and meta["seed"] == 1
    # each seed its own split, recorded in the run's config; the swapped control calls mor first
    configs = [dynamics.read_meta(tmp_path / "runs" / "mfeat" / f"separate-seed{k}")["config"] for k in (0, 1)]
    assert [c["data_seed"] for c in configs] == [0, 1] and [c["split_seed"] for c in configs] == [0, 1]
    swapped = dynamics.read_meta(tmp_path / "runs" / "mfeat" / "shared-swapped-seed0")["config"]
    assert swapped["view_order"] == ["mor", "fou"]
    assert "claims" in found and found["claims"]["midl2020"]["gradient_norm"]["n_params"]["fou"] == 76 * 64 + 64 + 2 * (64 * 64 + 64)
    # resumable: a second call trains nothing (every run dir holds its results) and writes the same findings
    monkeypatch.setattr(reproduce, "_run_one", lambda cfg: (_ for _ in ()).throw(AssertionError(f"retrained {cfg.out}")))
    assert reproduce.main(["--dataset", "mfeat", "--seeds", "2", "--max-steps", "2", "--epochs", "1", "--jobs", "1",
                           "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "findings.json").read_text())["conditions"].keys() == found["conditions"].keys()


def test_reproduce_gate_stops_the_joint_grid(tmp_path, monkeypatch):
    """A failed check stops the grid before any joint model trains, and the findings say so."""
    monkeypatch.setitem(reproduce.GATES, "mfeat", F.Gate(min_single=1.01))  # no model reaches AUC 1.01
    out = tmp_path / "fig"
    rc = reproduce.main(["--dataset", "mfeat", "--seeds", "2", "--max-steps", "2", "--epochs", "1",
                         "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-progress", "--jobs", "1"])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["condition"]) == {"only-fou", "only-mor", "ensemble"}
    found = json.loads((out / "findings.json").read_text())
    assert not found["passed"] and found["conditions"] == {} and any("not run" in n for n in found["notes"])
    assert "**FAILED**" in (out / "findings.md").read_text()


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
