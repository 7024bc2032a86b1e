"""Compaction: the parts of many flushes merged into a few files, at close and by ``dynamics compact``, with
exactly the same tables loaded before and after."""
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

import dynamics
from dynamics import cli, store
from dynamics.store import compaction
from tests.harness import SharedColumn, fresh_model, make_batches

TABLES = ("params", "steps", "attribution", "probe")


def _files(run):
    return {t: sorted(p.name for p in (run / t).iterdir()) for t in TABLES}


def _uncompacted(monkeypatch, record):
    """Run ``record()`` with compaction at close switched off; restored afterwards."""
    with monkeypatch.context() as patch:
        patch.setattr(compaction, "compact", lambda run_dir, trusted, **kwargs: list(trusted))
        return record()


def _two_view(out):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    [(x_cc, x_mlo, y)] = make_batches(1, seed=9)[0]
    probe = dynamics.ProbeBatch(inputs=(x_cc, x_mlo), targets=y, loss_fn=lambda o, t: ((o - t) ** 2).mean())
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out, flush_every=1,
                          every=2, probe=probe, probe_every=3)
    for step, micro in enumerate(make_batches(25)):
        for x_cc, x_mlo, y in micro:
            loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
            loss.backward()
            rec.log(during=loss)             # before the step: lands in the step's own flush
        optimizer.step()
        optimizer.zero_grad()
        rec.log(loss=loss, epoch=float(step // 10) if step % 10 == 0 else float("nan"))  # in the next flush
    rec.close()
    return out


def _shared(out):
    torch.manual_seed(0)
    model = SharedColumn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=out, flush_every=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        a, b, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
        ((model(a, b) - y) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    rec.close()
    return out


def _loaded(run):
    out = dynamics.load(run) + dynamics.load(run, split_shared=False)
    try:
        return out + (dynamics.load_probe(run),)
    except dynamics.RunStoreError:
        return out


@pytest.mark.parametrize("record", [_two_view, _shared])
def test_compaction_merges_every_flush_and_loads_the_same_tables(tmp_path, monkeypatch, record):
    run = _uncompacted(monkeypatch, lambda: record(tmp_path / "run"))
    flushes = len(list((run / "commits").glob("*.json")))
    assert flushes > 10 and len(_files(run)["params"]) >= flushes - 1  # the last may hold logged scalars only
    before = _loaded(run)
    closed = tmp_path / "closed"  # the same run closed the ordinary way: compacted at close
    record(closed)
    assert all(len(names) <= 1 for names in _files(closed).values())
    assert len(list((closed / "commits").glob("*.json"))) == 1
    assert cli.main(["compact", str(run)]) == 0
    assert _files(run) == _files(closed)
    for a, b, c in zip(before, _loaded(run), _loaded(closed)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        pd.testing.assert_frame_equal(a, c, check_exact=True)


def test_compaction_writes_a_few_bounded_files_and_leaves_full_ones_alone(tmp_path, monkeypatch):
    run = _uncompacted(monkeypatch, lambda: _two_view(tmp_path / "run"))
    before = dynamics.load(run)
    n_tensors = len(dynamics.read_meta(run)["parameters"])
    monkeypatch.setattr(compaction, "FILE_ROWS", 4 * n_tensors)  # 4 recorded steps per file
    monkeypatch.setattr(compaction, "ROW_GROUP", n_tensors)       # and several row groups in each
    store.compact_run(run)
    first = _files(run)["params"]
    assert 3 <= len(first) <= 5
    for a, b in zip(before, dynamics.load(run)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    store.compact_run(run)  # nothing left to merge: no file is rewritten
    assert _files(run)["params"] == first


def test_compact_command_reports_and_refuses_what_it_cannot_compact(tmp_path, monkeypatch, capsys):
    run = _uncompacted(monkeypatch, lambda: _shared(tmp_path / "run"))
    assert cli.main(["compact", str(run)]) == 0
    assert f"{run}: 36 part files -> 3" in capsys.readouterr().out
    assert cli.main(["compact", str(tmp_path / "missing")]) == 2
    assert "missing/meta.json: not a dynamics run" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "copy")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, json, platform; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.lockf(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': platform.node()})"
        ".encode()); print('ready', flush=True); sys.stdin.readline()"), str(tmp_path / "copy" / "writer.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert cli.main(["compact", str(tmp_path / "copy")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another writer holds this run (pid {holder.pid}" in err
    finally:
        holder.communicate("\n", timeout=60)
