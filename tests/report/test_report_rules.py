"""The report's rules on which runs count and which numbers a sentence may cite (issues 24 and 26), on small
recorded runs; every number checked against a hand computation (Holm written out, scipy's t quantiles)."""
import json
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import dynamics  # noqa: E402
from dynamics import cli, report  # noqa: E402
from dynamics.analysis import min_detectable_difference  # noqa: E402
from tests.report.models import TwoView, record_two_view  # noqa: E402


def train(out, condition, seed, *, steps=9, close=True, auc=True, scale=2.0):
    """A run logging its mini-batch ``loss`` every step and, when ``auc``, ``test_auc`` once at the end."""
    rec = record_two_view(out, condition, seed, steps=steps, flush_every=3, scale=scale, log_loss=True)
    if auc:
        rec.log(test_auc=0.80 + seed / 50 + ((0.02 + 0.01 * (seed % 2)) if condition == "shared" else 0.0))
    if close:
        rec.close()
    return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """``shared`` given first, then ``separate`` (the reference by name), 3 seeds each, and a fourth ``shared`` run
    that crashed after 4 of 9 steps (never closed)."""
    tmp = tmp_path_factory.mktemp("grid")
    runs = [train(tmp / f"shared-s{s}", "shared", s, scale=1.0) for s in range(3)]
    runs += [train(tmp / f"separate-s{s}", "separate", s) for s in range(3)]
    runs.append(train(tmp / "shared-s3", "shared", 3, steps=4, close=False, scale=1.0))
    return runs


@pytest.fixture(scope="module")
def written(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    return out, report.report(grid, out, progress=False)


def _holm(p):
    """Holm's step-down adjusted p and the level of each test, written out (statsmodels is not available)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, levels, running = [0.0] * len(p), [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adjusted[i], levels[i] = running, 0.05 / (len(p) - k)
    return adjusted, levels


def test_reference_is_chosen_by_name_not_by_glob_order(written):
    out, paths = written
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["reference"]) == {"separate"} and set(comparisons["group"]) == {"shared"}
    assert "Comparisons with the reference (separate)" in paths["md"].read_text()


def test_never_closed_run_is_left_out_and_listed(written):
    out, paths = written
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.loc[summary["group"] == "shared", "n_runs"]) == {3}  # the crashed run is not counted
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["n_group"]) == {3} and set(comparisons["design"]) == {"paired t by seed (3 pairs)"}
    md = paths["md"].read_text()
    warnings = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "| shared-s3 | excluded | left out of every statistic: never closed (status 'running'); 3 recorded " \
           "steps against a median of 9 in shared (more than a tenth apart) (--include-flagged keeps it) |" in warnings


def test_include_flagged_keeps_them_and_refuses_uneven_phases(grid, tmp_path):
    assert cli.main(["report", *map(str, grid), "--out", str(tmp_path / "r"), "--include-flagged",
                     "--no-progress"]) == 0
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    shared = summary[summary["group"] == "shared"]
    assert list(shared["phase"]) == ["all"] and set(shared["n_runs"]) == {4}  # phases would mean other steps
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Flagged runs are included in every statistic (--include-flagged): shared-s3" in md
    assert "The phases (early, middle, late) of shared are not shown: its runs cover different steps" in md
    assert "shared-s3 | flagged, kept |" in md
    assert set(summary.loc[summary["group"] == "separate", "phase"]) == {"early", "middle", "late", "all"}


def test_one_holm_family_in_every_file(written):
    out, paths = written
    summary, comparisons = pd.read_csv(out / "summary.csv"), pd.read_csv(out / "comparisons.csv")
    p = list(comparisons["p"].dropna()) + list(summary["p"].dropna())
    adjusted, levels = _holm(p)
    n = comparisons["p"].notna().sum()
    assert list(comparisons["p_holm"].dropna()) == pytest.approx(adjusted[:n])
    assert list(summary["p_holm"].dropna()) == pytest.approx(adjusted[n:])
    assert list(comparisons["alpha_holm"].dropna()) == pytest.approx(levels[:n])
    for r in comparisons.itertuples():  # the MDD at the level the test used
        assert r.mdd == pytest.approx(min_detectable_difference(r.se, r.df, alpha=r.alpha_holm), rel=1e-6)
    md = paths["md"].read_text()
    assert f"one Holm family ({len(p)} tests)" in md
    for r in comparisons.itertuples():
        shown = "< 0.001" if r.p_holm < 0.001 else f"{r.p_holm:.3f}"
        row = next(line for line in md.splitlines() if line.startswith(f"| {r.quantity} |"))
        assert f"| {shown} |" in row


def test_training_scalars_are_described_not_tested(written, grid, tmp_path):
    out, paths = written
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert "test_auc" in set(comparisons["quantity"]) and "loss" not in set(comparisons["quantity"])
    md = paths["md"].read_text()
    assert "The training scalars loss (logged during training, not once at the end) are described" in md
    assert "changed loss" not in md
    nums = report.ReportNumbers(report.load_report_data(grid, progress=False), metrics=["loss"])
    assert set(nums.comparisons["quantity"]) >= {"loss"} and "test_auc" not in set(nums.comparisons["quantity"])
    with pytest.raises(ValueError, match="--metrics nope: not logged by any run; the runs logged"):
        report.ReportNumbers(report.load_report_data(grid, progress=False), metrics=["nope"]).outcomes


def test_unnamed_reference_is_refused_with_the_list_and_nothing_written(grid, tmp_path, capsys):
    other = [train(tmp_path / f"a-s{s}", "a", s) for s in range(2)] + [train(tmp_path / "b-s0", "b", 0)]
    assert cli.main(["report", *map(str, other), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "which condition is the reference? none is called separate or baseline: pass --baseline with one of " \
           "['a', 'b']" in err
    assert not (tmp_path / "r").exists()


def test_missing_outcome_comparison_says_why(tmp_path):
    runs = [train(tmp_path / f"separate-s{s}", "separate", s) for s in range(3)]
    runs += [train(tmp_path / f"moddrop-s{s}", "moddrop", s, auc=False) for s in range(3)]
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False))
    assert "test_auc" not in set(nums.comparisons["quantity"])
    assert "test_auc is not compared for moddrop: its runs logged no test_auc." in nums.comparison_notes


def test_run_that_recorded_no_step_is_listed_and_named_alone(grid, tmp_path, capsys):
    torch.manual_seed(0)
    model = TwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dynamics.attach(model, opt, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "dead", condition="shared",
                    seed=7)  # crashed before its first step: never closed, nothing flushed
    runs = [*grid[:6], tmp_path / "dead"]
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False))
    w = nums.warnings
    row = w[(w["run"] == "dead") & (w["kind"] == "excluded")]
    assert list(row["message"]) == ["left out of every statistic: recorded no step (status 'running': it stopped "
                                    "before its first flush)"]
    assert cli.main(["report", str(tmp_path / "dead"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "dead" in capsys.readouterr().err


def test_copied_run_counts_once_with_both_folders_named(grid, tmp_path):
    copy = tmp_path / "backup" / grid[0].name
    shutil.copytree(grid[0], copy)
    runs = [*grid[:6], copy]
    nums = report.ReportNumbers(report.load_report_data(runs, progress=False))
    overall = nums.summary[nums.summary["phase"] == "all"].set_index("group")
    assert overall.loc["shared", "n_runs"] == 3  # not 4: the copy is the same seed's run
    message = " ".join(nums.warnings.loc[nums.warnings["kind"] == "excluded", "message"])
    rid = json.loads((grid[0] / "meta.json").read_text())["run_id"]
    assert f"a copy of run {grid[0]} (the same run_id {rid} in the folders {grid[0]} and {copy})" in message


def test_pair_rows_and_sentences_use_one_name_per_ratio(written):
    out, paths = written
    md = paths["md"].read_text().split("## Figures", 1)[0]  # the figures' captions are theirs
    assert "grad-norm ratio" not in md and "gradient-norm ratio" not in md and "dominant view" not in md
    assert "ratio of mean gradient norms A/B" in md and "matched-layer ratio A/B" in md
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["leads"]) <= {"cc", "mlo", "neither"}
    for sentence in re.findall(r"^- (.*cannot reach.*)$", md, flags=re.M):
        assert "this sign-flip test cannot show it" in sentence and "runs cannot show" not in sentence


def test_step_flags_by_hand():
    from dynamics.report.notices import flagged_runs
    metas = {r: {"status": "closed", "run_id": r} for r in ("a", "b", "c", "d", "e")}
    steps = {"a": 100, "b": 111, "c": 89, "d": 30, "e": 60}
    group = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y"}
    f = flagged_runs(metas, steps, group).set_index("run")
    # x: median 100, b is 11 away (> 10), c 11 away; y: of two runs only the shorter (median taken as 60)
    assert sorted(f.index) == ["b", "c", "d"] and not f["always"].any()
    assert f.loc["d", "reason"] == "30 recorded steps against a median of 60 in y (more than a tenth apart)"


def test_errors_flag_by_who_raised_them_and_whether_a_resume_followed():
    """By hand: a recorder error flags a run (in this attach or before a resume); the training loop's own
    exception flags it only when no resume followed; the warnings keep what came before a resume."""
    from dynamics.report.notices import flagged_runs, run_warnings
    crash = "training raised ValueError: boom"
    metas = {"resumed": {"status": "closed", "run_id": "1", "before_resume": [
                 {"resumed_at": 3, "status": "closed", "errors": [crash], "notes": {"n1": [2]}}]},
             "stopped": {"status": "closed", "run_id": "2", "errors": [crash]},
             "hooks": {"status": "closed", "run_id": "3", "before_resume": [
                 {"resumed_at": 3, "status": "closed", "errors": ["recording stopped at step 1: X"], "notes": {}}]},
             "plain": {"status": "closed", "run_id": "4", "errors": ["disk full"]}}
    f = flagged_runs(metas, {r: 10 for r in metas}, {r: "g" for r in metas}).set_index("run")
    assert sorted(f.index) == ["hooks", "plain", "stopped"]
    assert f.loc["stopped", "reason"] == f"its training stopped ({crash})"
    assert f.loc["hooks", "reason"] == "1 recorder error before a resume"
    assert f.loc["plain", "reason"] == "1 recorder error"
    w = run_warnings(metas)
    mine = w[w["run"] == "resumed"]
    assert mine["kind"].tolist() == ["error before resume", "note before resume"]
    assert mine["message"].iloc[0] == f"before the resume at step 3: {crash}"
    assert mine["message"].iloc[1] == "before the resume at step 3: note: n1 (at 1 step: 2)"
