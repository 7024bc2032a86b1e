"""The run directory: crash safety, corrupt files, no silent overwrite, resume, and multi-run loading."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import dynamics
from dynamics.store import RunStoreError
from tests.harness import fresh_model, logged_steps, make_batches

REPO = Path(__file__).resolve().parents[2]  # the checkout whose dynamics the subprocess must import
N_TENSORS = len(list(fresh_model().parameters()))


def _attach(model, out, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out, **kwargs)


def test_sigkill_loses_at_most_the_steps_since_the_last_flush(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import dynamics
        assert dynamics.__file__.startswith({str(REPO / "dynamics")!r}), dynamics.__file__  # this checkout
        from tests.harness import fresh_model, logged_steps, make_batches
        model = fresh_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = dynamics.attach(model, opt, views={{"cc": model.cc}}, out={str(tmp_path / "run")!r}, flush_every=10)
        for step, micro in enumerate(make_batches(30)):
            for x_cc, x_mlo, y in micro:
                ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            opt.step(); opt.zero_grad()
            if step == 24:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    per_param, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == list(range(20))  # steps 20-24 were buffered, 0-19 flushed
    assert len(per_param) == 20 * N_TENSORS and per_param["grad_sq"].notna().all()
    assert dynamics.read_meta(tmp_path / "run")["status"] == "running"


def test_corrupt_part_error_names_the_file(tmp_path):
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "r", flush_every=2)
    logged_steps(model, optimizer, rec, 4)
    rec.close()
    [part] = sorted((tmp_path / "r" / "params").iterdir())  # compacted at close
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    with pytest.raises(RunStoreError, match=part.name):
        dynamics.load(tmp_path / "r")
    (tmp_path / "r" / "meta.json").write_text("{not json")
    with pytest.raises(RunStoreError, match="meta.json"):
        dynamics.load(tmp_path / "r")


def test_existing_run_is_never_overwritten_and_resume_appends(tmp_path):
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "r", flush_every=3)
    logged_steps(model, optimizer, rec, 4)
    rec.close()
    before = sorted(p.name for p in (tmp_path / "r" / "params").iterdir())
    with pytest.raises(RunStoreError, match="already exists"):
        _attach(model, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r" / "params").iterdir()) == before
    optimizer, rec = _attach(model, tmp_path / "r", resume=True)
    logged_steps(model, optimizer, rec, 3, seed=2)
    rec.close()
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_step["step"].tolist() == list(range(7))
    assert dynamics.read_meta(tmp_path / "r")["resumed_at"] == [4]


def test_resume_refuses_a_different_model(tmp_path):
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "r")
    rec.close()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(RunStoreError, match="cannot resume"):
        _attach(model, tmp_path / "r", resume=True)


def test_load_columns_dtypes_and_metadata(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r",
                          config={"batch": 8}, seed=3, condition="baseline")
    logged_steps(model, optimizer, rec, 2)
    rec.close()
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert list(per_param.columns) == ["step", "param", "view", "layer", "depth", "grad_sq", "param_sq",
                                       "update_sq", "lca", "finite", "has_grad", "attributed", "cross"]
    assert list(per_step.columns) == ["step", "recorded", "skipped", "clip_factor", "lr_0", "loss"]
    for column in ("param", "view", "layer"):
        assert isinstance(per_param[column].dtype, pd.CategoricalDtype)
    assert list(per_param["view"].cat.categories) == ["cc", "mlo", "shared"]
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["config"] == {"batch": 8} and meta["seed"] == 3 and meta["optimizer"]["defaults"]["lr"] == 0.1
    assert {"torch", "dynamics", "python"} <= set(meta["versions"]) and meta["status"] == "closed"
    assert sum(p["numel"] for p in meta["parameters"]) == sum(p.numel() for p in model.parameters())


def test_load_runs_adds_run_condition_and_seed(tmp_path):
    for condition, seed in [("a", 0), ("a", 1), ("b", 0)]:
        model = fresh_model(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / f"{condition}-{seed}",
                              condition=condition, seed=seed)
        logged_steps(model, optimizer, rec, 2)
        rec.close()
    per_param, per_step = dynamics.load_runs(str(tmp_path / "*"))
    assert per_step.groupby(["run", "condition", "seed"], observed=True).size().to_dict() == {
        ("a-0", "a", 0): 2, ("a-1", "a", 1): 2, ("b-0", "b", 0): 2}
    assert len(per_param) == 3 * 2 * N_TENSORS and isinstance(per_param["run"].dtype, pd.CategoricalDtype)
    with pytest.raises(RunStoreError, match="matches no run"):
        dynamics.load_runs(str(tmp_path / "nothing-*"))


def test_part_naming_an_unknown_tensor_is_an_error_naming_the_file(tmp_path):
    from dynamics import store
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "r")
    logged_steps(model, optimizer, rec, 1)
    rec.close()
    bad = pd.DataFrame({"step": [5], "param_id": pd.array([999], dtype="int32"), "grad_sq": [1.0],
                        "param_sq": [1.0], "update_sq": [1.0], "lca": [0.0], "finite": [True], "has_grad": [True]})
    writer = store.open_run(tmp_path / "r", resume=True)
    writer.commit({"params": bad})
    writer.release()
    with pytest.raises(RunStoreError, match="part-000001.parquet: parameter ids outside"):
        dynamics.load(tmp_path / "r")


def test_a_steps_scalars_split_across_two_flushes_are_averaged(tmp_path):
    """A resumed run that logs before its first backward pass attaches the value to the last step of the run
    it resumes, whose scalars the first session committed: two parts hold one value each for that step, and
    the loaded value is their mean (by hand: (1.0 + 4.0) / 2 = 2.5), not the first one. A scalar that only
    one part holds (``acc``) is kept as it is, and the step is one row."""
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "run")
    for micro in make_batches(3):
        for x_cc, x_mlo, y in micro:
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    rec.log(loss=1.0)  # step 2, the one just taken
    rec.close()
    optimizer, rec = _attach(model, tmp_path / "run", resume=True)
    rec.log(loss=4.0, acc=0.5)  # before any backward pass of this session: still step 2
    rec.close()
    _, per_step = dynamics.load(tmp_path / "run")
    assert per_step["step"].tolist() == [0, 1, 2]
    row = per_step.set_index("step").loc[2]
    assert (row["loss"], row["acc"], row["recorded"]) == (2.5, 0.5, True)


def test_rerunning_after_a_crash_before_any_commit_says_what_is_there_and_what_to_do(tmp_path):
    """A run killed before its first commit (status running, no step committed, a stale lock): attaching again
    without resume says so, and that nothing is lost by removing the folder; a closed run says how many steps it
    holds and offers resume=True."""
    from tests.store.test_faults import _child
    run = tmp_path / "r"
    kill = ("replace", r"/params/", "before", 1)  # at the first part's rename: nothing committed
    subprocess.run([sys.executable, "-c", _child(run, kill=kill)], capture_output=True, timeout=300, cwd=REPO)
    assert dynamics.read_meta(run)["status"] == "running" and not list((run / "commits").iterdir())
    with pytest.raises(RunStoreError, match=r"already exists: a run that was not closed \(status 'running'\), with no "
                                            r"step committed, its writer lock stale \(pid \d+ .* is gone\): nothing "
                                            r"committed is lost by starting again: remove the folder or choose "
                                            r"another out=; resume=True continues this run from step 0"):
        _attach(fresh_model(), run)
    closed = tmp_path / "closed"
    model = fresh_model()
    optimizer, rec = _attach(model, closed)
    logged_steps(model, optimizer, rec, 2)
    rec.close()
    with pytest.raises(RunStoreError, match=r"already exists: a closed run, with steps 0-1 committed, no writer "
                                            r"lock: pass resume=True to continue it after step 1, or choose another "
                                            r"out= \(or remove the folder\) for a new run"):
        _attach(model, closed)


def test_a_resume_keeps_what_the_earlier_attaches_said(tmp_path):
    """The crash's error and the notes of the attach before a resume move to meta.json["before_resume"] (one
    entry per resumed attach, oldest first), and `dynamics check` still prints them."""
    from dynamics.store.check import check_run
    model = fresh_model()
    optimizer, rec = _attach(model, tmp_path / "r", flush_every=2)
    with pytest.raises(ValueError, match="boom"):
        with rec:
            logged_steps(model, optimizer, rec, 2)
            optimizer.zero_grad(set_to_none=True)
            optimizer.step()  # a step without any gradient: the recorder notes it
            raise ValueError("boom")
    first = dynamics.read_meta(tmp_path / "r")
    assert first["errors"] == ["training raised ValueError: boom"] and first["notes"]
    for k in (1, 2):
        optimizer, rec = _attach(model, tmp_path / "r", resume=True)
        logged_steps(model, optimizer, rec, 2, seed=k)
        rec.close()
    meta = dynamics.read_meta(tmp_path / "r")
    assert meta["resumed_at"] == [3, 5] and not meta.get("errors")
    assert meta["before_resume"] == [{"resumed_at": 3, "status": "closed", "errors": first["errors"],
                                      "notes": first["notes"]}]  # the second attach said nothing: no entry
    assert "before the resume at step 3: training raised ValueError: boom" in check_run(tmp_path / "r").errors
