"""Damage to the commit records is refused, never loaded as a shorter run and never destroyed.

A closed run whose last commit records are gone (its parts intact, each carrying this run's id and its flush
range): ``load`` refuses it naming the missing steps and the parts that hold them; ``resume=True`` refuses it
and changes no byte; ``dynamics check`` says so and exits non-zero. The parts of a flush a killed writer never
committed are quarantined (tests/store/test_faults.py) and listed by ``dynamics check``.
"""
import json
import subprocess
import sys

import pytest
import torch

import dynamics
from dynamics import cli
from dynamics.store import RunStoreError, compaction
from tests.harness import fresh_model, logged_steps, make_batches
from tests.store.test_faults import REPO, _child

STEPS = 6


def _closed_run(out, *, compacted=True, monkeypatch=None):
    """A run of 6 steps flushed every 2: flushes 0-2 hold steps 0-1, 2-3, 4-5 (and the logged loss of the step
    before), flush 3 (at close) the last step's loss; without compaction each flush keeps its own record."""
    if not compacted:
        monkeypatch.setattr(compaction, "FILE_ROWS", 1)  # every record its own group: nothing merged
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out, flush_every=2)
    logged_steps(model, optimizer, rec, STEPS)
    rec.close()
    if not compacted:
        monkeypatch.undo()
    return out


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_the_last_commit_record_of_a_closed_run_gone_is_refused_naming_the_steps(tmp_path, monkeypatch):
    run = _closed_run(tmp_path / "run", compacted=False, monkeypatch=monkeypatch)
    assert sorted(p.name for p in (run / "commits").iterdir()) == [f"00000{i}-00000{i}.json" for i in range(4)]
    meta = dynamics.read_meta(run)
    assert meta["status"] == "closed" and meta["next_step"] == STEPS
    for flush in (2, 3):  # steps 4-5 lose their records; their parts stay
        (run / "commits" / f"00000{flush}-00000{flush}.json").unlink()
    with pytest.raises(RunStoreError, match=r"committed data is missing.*flush\(es\) 2-3 \(steps 4-5\) are gone.*"
                                            r"params/part-000002\.parquet \(flushes 2-2, steps 4-5\)"):
        dynamics.load(run)
    with pytest.raises(RunStoreError, match="committed data is missing"):
        dynamics.load_runs([run])


def test_only_the_last_flush_of_logged_values_gone_is_refused_too(tmp_path, monkeypatch):
    """Flush 3 holds only step 5's logged loss: the steps still end at 5, but a record is missing."""
    run = _closed_run(tmp_path / "run", compacted=False, monkeypatch=monkeypatch)
    (run / "commits" / "000003-000003.json").unlink()
    with pytest.raises(RunStoreError, match=r"4 flush\(es\) were committed .* cover 3 \(steps up to 5\): the "
                                            r"records of flush\(es\) 3-3 are gone.*steps/part-000003\.parquet"):
        dynamics.load(run)


def test_the_only_record_of_a_compacted_run_gone_is_refused_not_an_empty_run(tmp_path):
    run = _closed_run(tmp_path / "run")
    [record] = (run / "commits").iterdir()
    record.unlink()
    with pytest.raises(RunStoreError, match=r"commit records cover 0 \(no step\).*steps 0-5"):
        dynamics.load(run)


@pytest.mark.parametrize("compacted", [True, False])
def test_resume_refuses_a_damaged_run_and_changes_no_byte(tmp_path, monkeypatch, compacted):
    run = _closed_run(tmp_path / "run", compacted=compacted, monkeypatch=monkeypatch)
    last = sorted((run / "commits").iterdir())[-1]
    last.unlink()
    before = _files(run)
    model = fresh_model()
    with pytest.raises(RunStoreError, match=r"committed data is missing.*resume=True refuses"):
        dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc, "mlo": model.mlo},
                        out=run, resume=True)
    assert _files(run) == before  # nothing removed, moved or written
    with pytest.raises(RunStoreError, match="committed data is missing"):
        dynamics.store.compact_run(run)
    assert _files(run) == before


def test_a_run_written_without_the_committed_count_is_checked_by_its_next_step(tmp_path):
    """Runs written before meta.json stated the committed flushes: a closed run recording every step must hold
    every step before its next_step."""
    run = _closed_run(tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    del meta["committed"]
    (run / "meta.json").write_text(json.dumps(meta))
    assert dynamics.load(run)[1]["step"].tolist() == list(range(STEPS))  # whole: loads
    next(iter((run / "commits").iterdir())).unlink()
    with pytest.raises(RunStoreError, match=r"closed at step 6 recording every step, the commit records hold no "
                                            r"step: steps 0-5 are gone"):
        dynamics.load(run)


# ----------------------------------------------------------------------------------- dynamics check
def test_check_a_whole_run_states_its_steps_flags_and_notes_and_exits_0(tmp_path, capsys):
    run = _closed_run(tmp_path / "run")
    assert cli.main(["check", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: whole (closed)" in out
    assert "committed: steps 0-5 (6 steps, 6 recorded; 4 flushes)" in out
    assert "flagged: none" in out and "quarantined: none" in out and "errors: none" in out


def test_check_a_damaged_run_names_what_is_missing_and_exits_1(tmp_path, capsys, monkeypatch):
    whole = _closed_run(tmp_path / "whole")
    run = _closed_run(tmp_path / "damaged", compacted=False, monkeypatch=monkeypatch)
    for flush in (2, 3):
        (run / "commits" / f"00000{flush}-00000{flush}.json").unlink()
    assert cli.main(["check", str(whole), str(run)]) == 1
    out = capsys.readouterr().out
    assert f"{whole}: whole (closed)" in out and f"{run}: DAMAGED (closed)" in out
    damaged = out[out.index(f"{run}: DAMAGED"):]
    assert "flush(es) 2-3 (steps 4-5) are gone" in damaged
    assert "uncommitted: params/part-000002.parquet (flushes 2-2, steps 4-5), verified" in damaged


def test_check_lists_quarantined_parts_flagged_steps_notes_and_errors(tmp_path, capsys):
    """A killed writer's uncommitted flush is listed as uncommitted before resume, quarantined after; a step
    with no gradient and a skipped step are flagged; notes and errors are stated."""
    run = tmp_path / "run"
    kill = ("replace", r"/commits/", "before", 3)  # the flush of steps 6-8 written, never committed
    subprocess.run([sys.executable, "-c", _child(run, kill=kill)], capture_output=True, timeout=300, cwd=REPO)
    assert cli.main(["check", str(run)]) == 0  # a crashed run is not damaged: its leftovers await a resume
    out = capsys.readouterr().out
    assert f"{run}: whole (running, not closed)" in out
    assert "uncommitted: params/part-000002.parquet (flushes 2-2, steps 6-8), verified" in out
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="quarantine"):
        rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=run, resume=True)
    optimizer.step()  # step 6: no gradient at all
    [(x_cc, x_mlo, y)] = make_batches(1)[0]
    ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
    optimizer.zero_grad()  # step 7: skipped (its gradient reset without a step)
    ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
    optimizer.step()
    rec.close()
    assert cli.main(["check", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: whole (closed)" in out
    assert "committed: steps 0-8 (9 steps, 9 recorded" in out
    assert "flagged: skipped step 7; without any gradient step 6" in out
    assert "quarantined: quarantine/params/part-000002.parquet (steps 6-8)" in out
    assert "optimizer step with no gradient" in out and "errors: none" in out


def test_check_a_folder_that_is_not_a_run_is_damage_and_the_others_are_still_checked(tmp_path, capsys):
    run = _closed_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    assert cli.main(["check", str(tmp_path / "empty"), str(run)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'empty'}: DAMAGED" in out and "not a dynamics run" in out and f"{run}: whole" in out


def test_check_calls_a_closed_run_holding_a_verified_part_no_record_commits_damaged(tmp_path, capsys, monkeypatch):
    """Where meta.json cannot tell (a run from before meta.json["committed"], not recording every step), a closed
    run that still holds a verified part no record commits has lost a record: check says so and exits 1."""
    run = _closed_run(tmp_path / "run", compacted=False, monkeypatch=monkeypatch)
    meta = json.loads((run / "meta.json").read_text())
    del meta["committed"]
    meta["schedule"] = "log"
    (run / "meta.json").write_text(json.dumps(meta))
    for flush in (2, 3):
        (run / "commits" / f"00000{flush}-00000{flush}.json").unlink()
    assert cli.main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"{run}: DAMAGED (closed)" in out and "committed: steps 0-3" in out
    assert "a closed run holds parts that verify but no commit record commits (a lost record): " \
           "params/part-000002.parquet (flushes 2-2, steps 4-5)" in out
