"""Runs reduced one at a time (``dynamics.analysis.sweep``) against the per-tensor tables: a run small enough to
sum by hand, brute-force pandas sums of the raw per-parameter rows, and every number of the report (which reads
only the sums) against the same numbers computed by the analysis functions from every per-tensor row."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dynamics
from dynamics import analysis, report, store
from dynamics.analysis import sweep
from dynamics.schema import SCHEMA_VERSION
from dynamics.store import RunStoreError

PARAMS = [  # name, view, layer, depth: view b has no depth 2; trunk is shared by a and b (attributed)
    ("a.l0.weight", "a", "a.l0", 0), ("a.l0.bias", "a", "a.l0", 0), ("a.l1.weight", "a", "a.l1", 1),
    ("a.l2.weight", "a", "a.l2", 2), ("b.l0.weight", "b", "b.l0", 0), ("b.l1.weight", "b", "b.l1", 1),
    ("b.l1.bias", "b", "b.l1", 1), ("head.weight", "shared", "head", 0), ("trunk.weight", "a+b", "trunk", 0)]


def _meta(params, condition, seed, views=("a", "b", "shared")) -> dict:
    return {"schema_version": SCHEMA_VERSION, "status": "finished", "views": list(views), "shared_name": "shared",
            "parameters": [{"name": n, "view": v, "layer": layer, "depth": d, "numel": 4, "group": 0}
                           for n, v, layer, d in params],
            "condition": condition, "seed": seed, "config": {"lr": 0.1}, "model": "synthetic",
            "optimizer": {"class": "SGD"}, "created": "2026-01-01T00:00:00+00:00", "versions": {}}


def _write(run_dir: Path, meta: dict, params: pd.DataFrame, steps: pd.DataFrame,
           attribution: pd.DataFrame | None = None, flushes: int = 1, compact: bool = True) -> Path:
    """Commit the frames in ``flushes`` flushes of consecutive steps, as the recorder does."""
    writer = store.open_run(run_dir, resume=False)
    writer.write_meta(meta)
    for chunk in np.array_split(np.sort(steps["step"].unique()), flushes):
        pick = {"params": params, "steps": steps, "attribution": attribution}
        writer.commit({t: f[f["step"].isin(chunk)] for t, f in pick.items() if f is not None})
    if compact:
        writer.close(meta)  # compacts the parts
    writer.release()  # idempotent
    return run_dir


def synthetic_run(run_dir: Path, *, seed: int, condition: str, steps: int = 14, flushes: int = 3,
                  compact: bool = True) -> Path:
    """Two views, a shared head and an attributed trunk, with every case the cleaning rule knows: skipped steps,
    a step with a non-finite gradient, tensors without a gradient (all of b's depth 1 at one step), and the
    last step's unknown update."""
    rng = np.random.default_rng(seed)
    n, st = len(PARAMS), np.arange(steps)
    g = rng.lognormal(0, 1, (steps, n)) * (1 + 2 * (np.arange(n) < 4))
    u = 0.01 * g * rng.lognormal(0, 0.3, (steps, n))
    lca = -np.sqrt(g * u) * np.where(rng.random((steps, n)) < 0.2, -1, 1)
    has_grad = np.ones((steps, n), bool)
    has_grad[3, [5, 6]] = False  # b's depth 1 is not matched at step 3
    has_grad[5 + seed % 3, 2] = False
    finite = np.ones((steps, n), bool)
    g[7, 4], finite[7, 4] = np.inf, False  # step 7 is dropped for every view
    u[-1], lca[-1] = np.nan, np.nan
    params = pd.DataFrame({"step": np.repeat(st, n), "param_id": np.tile(np.arange(n), steps).astype("int32"),
                           "grad_sq": g.ravel(), "param_sq": rng.lognormal(2, 0.1, steps * n),
                           "update_sq": u.ravel(), "lca": lca.ravel(), "finite": finite.ravel(),
                           "has_grad": has_grad.ravel()})
    parts = rng.dirichlet([1, 1], steps)  # the trunk's gradient, split between its views
    trunk = params[params["param_id"] == n - 1]
    attribution = pd.DataFrame({"step": np.repeat(st, 2), "param_id": np.int32(n - 1), "view": ["a", "b"] * steps,
                                "grad_sq": (trunk["grad_sq"].to_numpy()[:, None] * parts).ravel(),
                                "lca": (trunk["lca"].to_numpy()[:, None] * parts).ravel(),
                                "cross": rng.normal(0, 0.1, 2 * steps)})
    skipped = np.isin(st, [0, 10 + seed % 2])
    step_rows = pd.DataFrame({"step": st, "recorded": True, "skipped": skipped, "clip_factor": np.nan, "lr_0": 0.1,
                              "loss": 2.0 - st / steps})
    step_rows = pd.concat([step_rows, pd.DataFrame({"step": [steps - 1], "recorded": [True], "skipped": [False],
                                                    "clip_factor": [np.nan], "test_auc": [0.8 + seed / 100]})])
    return _write(run_dir, _meta(PARAMS, condition, seed), params, step_rows, attribution, flushes, compact)


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("sweep")
    return [synthetic_run(tmp / f"{c}-s{s}", seed=s, condition=c, compact=s != 1)
            for c in ("base", "other") for s in range(3)]


# --------------------------------------------------------------------------- a run summed by hand

def test_hand_computed_run(tmp_path):
    params = [("x.w", "x", "x.l0", 0), ("x.b", "x", "x.l0", 0), ("x.v", "x", "x.l1", 1), ("y.w", "y", "y.l0", 0)]
    grad = {0: [9, 16, 4, 1], 1: [1, 1, 1, 1], 2: [36, 64, 49, 4]}
    rows = pd.DataFrame([{"step": s, "param_id": i, "grad_sq": float(grad[s][i]), "param_sq": 2.0,
                          "update_sq": np.nan if s == 2 else 1.0, "lca": -(i + 1.0), "finite": True,
                          "has_grad": not (s == 2 and i == 2)} for s in grad for i in range(4)])
    rows["param_id"] = rows["param_id"].astype("int32")
    steps = pd.DataFrame({"step": [0, 1, 2], "recorded": True, "skipped": [False, True, False],
                          "clip_factor": np.nan})
    run = _write(tmp_path / "hand", _meta(params, "c", 0, views=("x", "y")), rows, steps)
    result = sweep.aggregate_runs([run])
    v = result.views.set_index(["view", "step"])
    assert v["used"].to_dict() == {("x", 0): True, ("x", 1): False, ("x", 2): True, ("y", 0): True, ("y", 1): False,
                                   ("y", 2): True}
    assert v.loc[("x", 0), ["grad_sq", "param_sq", "update_sq", "lca"]].tolist() == [29.0, 6.0, 3.0, -6.0]
    assert v.loc[("x", 0), "layer_grad_norm"] == 3.5  # (√(9 + 16) + √4) / 2
    assert v.loc[("x", 2), ["grad_sq", "param_sq", "lca"]].tolist() == [100.0, 4.0, -3.0]  # x.v had no gradient
    assert np.isnan(v.loc[("x", 2), "update_sq"]) and v.loc[("x", 2), "layer_grad_norm"] == 10.0
    assert v.loc[("y", 2), ["grad_sq", "layer_grad_norm"]].tolist() == [4.0, 2.0]
    assert v["phase"].astype(str).to_dict()[("x", 2)] == "late" and v["run"].astype(str).unique().tolist() == ["hand"]
    layers = result.layers.set_index(["depth", "phase"])[["sum_a", "sum_b", "n"]]
    assert layers.to_dict("index") == {(0, "early"): {"sum_a": 5.0, "sum_b": 1.0, "n": 1},
                                       (0, "late"): {"sum_a": 10.0, "sum_b": 2.0, "n": 1}}
    means = sweep.sweep_layer_means(result, [("x", "y")])
    whole = means[means["phase"] == "all"]
    assert whole[["depth", "a", "b"]].to_numpy().tolist() == [[0, 7.5, 1.5]]
    assert means.attrs["unmatched"] == {"x/y": [1]}
    assert np.allclose(result.ratios["log2_ratio"].to_numpy(), np.log2(5.0))
    turned = sweep.sweep_layer_means(result, [("y", "x")])
    assert turned.loc[turned["phase"] == "all", ["a", "b"]].to_numpy().tolist() == [[1.5, 7.5]]
    cells = sweep.ratio_cells(result.ratios, ["g"], result.pairs, [("y", "x")])
    assert cells[["_group", "view_a", "depth", "step", "n"]].to_numpy().tolist() == [["g", "y", 0, 0, 1],
                                                                                      ["g", "y", 0, 2, 1]]
    assert np.allclose(cells["log2_ratio"], -np.log2(5.0))


# --------------------------------------------------------------------------- brute force on the raw rows

def _brute_force(per_param: pd.DataFrame, per_step: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run, view and step sums, and per run, depth and step the views' depth norms, written out plainly."""
    df = per_param.assign(run=per_param["run"].astype(str), view=per_param["view"].astype(str))
    skipped = per_step[per_step["skipped"].fillna(False).astype(bool)]
    dropped = set(zip(skipped["run"].astype(str), skipped["step"]))
    bad = df[~np.isfinite(df["grad_sq"]) | ~np.isfinite(df["param_sq"]) | ~df["finite"]]
    dropped |= set(zip(bad["run"], bad["step"]))
    kept = np.array([(r, s) not in dropped for r, s in zip(df["run"], df["step"])], bool)
    keep = df[kept & df["has_grad"].to_numpy(bool)].copy()
    for q in ("update_sq", "lca"):
        keep.loc[~np.isfinite(keep[q]), q] = np.nan
    rows, depths = [], []
    for (run, view, step), g in keep.groupby(["run", "view", "step"]):
        norms = [np.sqrt(layer["grad_sq"].sum()) for _, layer in g.groupby("layer", observed=True)]
        rows.append({"run": run, "view": view, "step": step, "grad_sq": g["grad_sq"].sum(),
                     "param_sq": g["param_sq"].sum(), "update_sq": g["update_sq"].sum(min_count=1),
                     "lca": g["lca"].sum(min_count=1), "layer_grad_norm": np.mean(norms)})
        for depth, d in g.groupby("depth"):
            depths.append({"run": run, "view": view, "step": step, "depth": depth, "norm": np.sqrt(d["grad_sq"].sum())})
    return pd.DataFrame(rows), pd.DataFrame(depths)


def test_sums_match_brute_force_on_the_raw_rows(sweep_runs):
    result = sweep.aggregate_runs(sweep_runs)
    per_param, per_step = dynamics.load_runs(sweep_runs)
    expected, depths = _brute_force(per_param, per_step)
    got = result.views[result.views["used"]].assign(run=lambda d: d["run"].astype(str),
                                                    view=lambda d: d["view"].astype(str))
    keys = ["run", "view", "step"]
    got = got.sort_values(keys).reset_index(drop=True)[expected.columns]
    pd.testing.assert_frame_equal(got, expected.sort_values(keys).reset_index(drop=True), check_dtype=False,
                                  rtol=1e-12)
    assert len(result.views) == per_param.groupby(keys, observed=True).ngroups  # every recorded view and step
    assert set(result.views.loc[~result.views["used"], "step"]) == {0, 7, 10, 11}
    a = depths[depths["view"] == "a"].merge(depths[depths["view"] == "b"], on=["run", "depth", "step"])
    a["phase"] = np.array(["early", "middle", "late"])[np.floor(3 * a["step"] / 14).astype(int)]
    total = a.groupby(["run", "depth", "phase"])[["norm_x", "norm_y"]].agg(["sum", "count"])
    mine = result.layers[(result.layers["view_a"] == "a") & (result.layers["view_b"] == "b")]
    mine = mine.set_index(["run", "depth", "phase"]).sort_index()
    assert np.allclose(mine["sum_a"], total[("norm_x", "sum")].sort_index())
    assert np.allclose(mine["sum_b"], total[("norm_y", "sum")].sort_index())
    assert (mine["n"].to_numpy() == total[("norm_x", "count")].sort_index().to_numpy()).all()
    assert result.pairs == [("a", "b"), ("a", "shared"), ("b", "shared")]
    assert per_step.shape == result.per_step.shape and (per_step["run"] == result.per_step["run"]).all()


def test_a_damaged_run_is_named(sweep_runs, tmp_path):
    bad = tmp_path / "damaged"
    shutil.copytree(sweep_runs[0], bad)
    part = sorted((bad / "params").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(RunStoreError, match=f"{re.escape(str(bad))}.*damaged"):
        sweep.aggregate_runs([sweep_runs[1], bad])


# --------------------------------------------------------------------------- the report from both paths

def _same(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> None:
    def norm(df):
        df = df.assign(**{c: df[c].astype(str) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])})
        return df.sort_values(keys).reset_index(drop=True)
    assert len(left) and list(left.columns) == list(right.columns)
    pd.testing.assert_frame_equal(norm(left), norm(right), check_dtype=False, rtol=1e-9)


@dataclass
class _PerTensorData:
    """Every per-tensor row (``dynamics.load_runs``) under the names the report reads (``sums``, ``per_step``)."""
    sums: pd.DataFrame
    per_step: pd.DataFrame
    metas: dict
    utilization: dict = field(default_factory=dict)
    shared: str | None = "shared"
    sweep = None


class _PerTensorNumbers(report.ReportNumbers):
    """The reference: the report's numbers with the analysis functions on every per-tensor row (cleaning, view
    dynamics and matched layers of the per-tensor tables) where the report reads the sweep's sums."""

    def __init__(self, runs, **kwargs) -> None:
        per_param, per_step = dynamics.load_runs(runs)
        metas = {str(r): dynamics.read_meta(r) for r in runs}
        metas = dict(zip(store.run_labels(list(map(Path, runs))), metas.values()))
        super().__init__(_PerTensorData(per_param, per_step, metas), **kwargs)

    @property
    def cleaned(self):
        return analysis.clean(self.data.sums, self.data.per_step)

    @property
    def view_dynamics(self):
        return analysis.view_dynamics(self.data.sums, self.data.per_step, cleaned=self.cleaned)

    @property
    def _matched(self):
        return analysis.matched_pairs(self.data.sums, self.data.per_step, views=self.requested_views,
                                      shared=self.shared, cleaned=self.cleaned)

    @property
    def matched_layers(self):
        return analysis.matched_layer_means(self._matched)

    @property
    def matched_cells(self):
        ratios, runs, pairs = sweep.ratio_table(self._matched)
        return sweep.ratio_cells(ratios, [self.group_of.get(r, r) for r in runs], pairs, self.pairs)


def test_report_numbers_from_the_sums_match_the_per_tensor_rows(sweep_runs):
    old = _PerTensorNumbers(sweep_runs, baseline="base")
    new = report.ReportNumbers(report.load_report_data(sweep_runs, progress=False), baseline="base")
    assert len(new.data.sums) < len(old.data.sums) / 3
    assert new.pairs == old.pairs == [("a", "b")] and new.unmatched == old.unmatched == {"a/b": [2]}
    assert new.groups == old.groups and new.palette == old.palette and new.view_notes == old.view_notes
    _same(old.summary, new.summary, ["group", "phase", "view_a", "view_b"])
    _same(old.shares, new.shares, ["group", "phase", "view"])
    _same(old.comparisons, new.comparisons, ["group", "quantity"])
    _same(old.run_summary, new.run_summary, ["run", "phase", "view"])
    _same(old.pair_runs, new.pair_runs, ["run", "phase", "view_a", "view_b"])
    _same(old.exclusions, new.exclusions, ["run"])
    _same(old.runs, new.runs, ["run"])
    _same(old.metrics, new.metrics, ["group", "metric"])
    _same(old.matched_layers, new.matched_layers, ["view_a", "view_b", "phase", "run", "depth"])
    _same(old.matched_cells, new.matched_cells, ["_group", "view_a", "view_b", "depth", "step"])
    _same(old.conditional_speed, new.conditional_speed, ["view_a", "view_b", "run", "step"])
    vd = old.view_dynamics[list(new.view_dynamics.columns)]
    _same(vd, new.view_dynamics, ["run", "view", "step"])
    assert (old.summary["n_pairs"] > 0).all() and old.summary["p"].notna().all()


def test_report_files_from_aggregated_runs(sweep_runs, tmp_path):
    paths = report.report(sweep_runs, tmp_path / "r", progress=False, baseline="base")
    summary = pd.read_csv(paths["csv"])
    old = _PerTensorNumbers(sweep_runs, baseline="base").summary
    assert np.allclose(summary["grad_ratio"], old["grad_ratio"]) and (paths["figures"] / "matched_ratio.png").exists()
