"""Fault injection for the run store: kills at every point of a flush and of compaction, two writers, a full
disk, and files that were copied, replaced, truncated or damaged. The promise under test: a flush is visible
whole or not at all, resuming never loses or duplicates a committed row, and anything wrong on disk is an
error naming the file (never rows loaded silently wrong)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import dynamics
from dynamics.store import RunStoreError
from tests.harness import fresh_model, logged_steps

REPO = Path(__file__).resolve().parents[2]
N_TENSORS = len(list(fresh_model().parameters()))
STEPS, FLUSH_EVERY = 20, 3   # flushes at steps 2, 5, 8, ... (the 3rd holds steps 6-8), the last one at close

_CHILD = """
import os, re, signal, sys, time, torch
sys.path.insert(0, {repo!r})
import dynamics
assert dynamics.__file__.startswith({package!r}), dynamics.__file__
from tests.harness import fresh_model, logged_steps
call, pattern, when, nth = {kill!r}
real = getattr(os, call)
seen = 0
def patched(*args, **kwargs):
    global seen
    target = str(args[1] if call == "replace" else args[0])
    hit = re.search(pattern, target) is not None and (seen := seen + 1) == nth
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(os, call, patched)
model = fresh_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rec = dynamics.attach(model, opt, views={{"cc": model.cc, "mlo": model.mlo}}, out={out!r},
                      flush_every={flush_every}, resume={resume!r})
print("ready", flush=True)
if {hold!r}:
    sys.stdin.readline()
logged_steps(model, opt, rec, {steps})
rec.close()
"""


def _child(out, *, kill=("replace", "^$", "before", 1), steps=STEPS, resume=False, hold=False) -> str:
    return textwrap.dedent(_CHILD.format(repo=str(REPO), package=str(REPO / "dynamics"), kill=kill, out=str(out),
                                         flush_every=FLUSH_EVERY, resume=resume, hold=hold, steps=steps))


def _attach(model, out, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=out, **kwargs)


def _closed_run(out, steps=7, flush_every=2, seed=0):
    model = fresh_model(seed)
    optimizer, rec = _attach(model, out, flush_every=flush_every)
    logged_steps(model, optimizer, rec, steps)
    rec.close()
    return out


def _assert_whole(run, n_steps):
    """Steps 0..n-1 each exactly once in per_step, and every tensor exactly once per recorded step."""
    per_param, per_step = dynamics.load(run)
    assert per_step["step"].tolist() == list(range(n_steps))
    assert not per_param.duplicated(["step", "param", "view"]).any()
    assert per_param.groupby("step").size().eq(N_TENSORS).all() and per_param["step"].nunique() == n_steps
    return per_param, per_step


def _committed_parts(run, table="params"):
    if not (run / "commits").is_dir():  # a store without commit records (to run these tests on it)
        return sorted((run / table).glob("part-*.parquet"))
    records = [json.loads(p.read_text()) for p in sorted((run / "commits").glob("*.json"))]
    return [run / e["file"] for r in records for e in r["parts"].get(table, [])]


# ------------------------------------------------------------------------------------------- kills
# (os call, target pattern, before/after the call, n-th matching call) -> steps committed when killed, and
# whether parts of an uncommitted flush are left (removed on resume, with a warning)
KILL_POINTS = {
    "after the params part, before the steps part": (("replace", r"/params/", "after", 3), 6, True),
    "at the steps part's rename": (("replace", r"/steps/", "before", 3), 6, True),
    "every part written, before the commit record": (("replace", r"/commits/", "before", 3), 6, True),
    "right after the commit record": (("replace", r"/commits/", "after", 3), 9, False),
    "at close, before the compacted parts' record":
        (("replace", r"/commits/0+-0*[1-9]\d*\.json$", "before", 1), 20, False),
    "at close, compacted, before the old parts are removed":
        (("unlink", r"/params/part-\d+\.parquet$", "before", 1), 20, False),
    "at close, while writing meta.json": (("replace", r"meta\.json$", "before", 2), 20, False),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_any_point_of_a_flush_then_load_and_resume(tmp_path, point):
    kill, committed, leftovers = KILL_POINTS[point]
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", _child(run, kill=kill)], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == -signal.SIGKILL, f"not killed at {point}: {result.stderr[-2000:]}"
    _assert_whole(run, committed)  # what was committed, whole; nothing of the interrupted flush
    model = fresh_model(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer, rec = _attach(model, run, resume=True, flush_every=2)
    assert any("never committed" in str(w.message) for w in caught) == leftovers
    logged_steps(model, optimizer, rec, 5, seed=2)
    rec.close()
    per_param, per_step = _assert_whole(run, committed + 5)
    meta = dynamics.read_meta(run)
    assert meta["resumed_at"] == [committed]
    stale = [r["stale_lock"]["pid"] for r in meta.get("recovered", []) if "stale_lock" in r]
    assert len(stale) == 1 and stale[0] != os.getpid()  # the killed writer's lock, taken over and said so
    assert not list(run.rglob("*.tmp"))
    assert len(_committed_parts(run)) == 1 and sorted(p.name for p in (run / "params").iterdir()) == \
        [p.name for p in _committed_parts(run)]  # compacted; the leftovers of the kill are gone


def test_resume_quarantines_the_uncommitted_parts_that_verify_and_says_which_steps(tmp_path):
    """The parts of a flush a killed writer never committed verify: they are moved to quarantine/ byte for byte
    (never deleted), listed in meta.json and said in the warning; loading ignores them."""
    run = tmp_path / "run"
    kill = ("replace", r"/commits/", "before", 3)  # flush of steps 6-8 written, never committed
    subprocess.run([sys.executable, "-c", _child(run, kill=kill)], capture_output=True, timeout=300, cwd=REPO)
    left = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.glob("*/part-000002.parquet")}
    assert sorted(left) == ["params/part-000002.parquet", "steps/part-000002.parquet"]
    with pytest.warns(RuntimeWarning, match=r"never committed.*quarantine/.*steps 6-8"):
        _, rec = _attach(fresh_model(), run, resume=True)
    rec.close()
    meta = dynamics.read_meta(run)
    [note] = meta["recovered"]
    assert any("steps 6-8" in d for d in note["quarantined_uncommitted"]) and "discarded_uncommitted" not in note
    assert sorted(q["file"] for q in meta["quarantined"]) == sorted(left)
    for q in meta["quarantined"]:
        assert q["steps"][1] == 8 and (run / q["moved_to"]).read_bytes() == left[q["file"]]
        assert q["moved_to"].startswith("quarantine/")


# ------------------------------------------------------------------------------------- two writers
def _start_holder(run, resume):
    child = subprocess.Popen([sys.executable, "-c", _child(run, resume=resume, hold=True, steps=4)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO)
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    return child


def test_two_live_writers_on_one_run_are_refused(tmp_path):
    run = _closed_run(tmp_path / "run")
    before = dynamics.load(run)
    child = _start_holder(run, resume=True)
    try:
        holder = rf"another writer holds this run \(pid {child.pid} on host .*writer\.lock"
        with pytest.raises(RunStoreError, match=holder):
            _attach(fresh_model(), run, resume=True)
        with pytest.raises(RunStoreError, match="another writer"):
            dynamics.store.compact_run(run)
    finally:
        child.communicate("go\n", timeout=300)
    assert child.returncode == 0
    pd.testing.assert_frame_equal(dynamics.load(run)[0].iloc[:len(before[0])], before[0])
    model = fresh_model()
    optimizer, rec = _attach(model, run, resume=True)  # released at close: the next writer may open it
    logged_steps(model, optimizer, rec, 1)
    rec.close()
    _assert_whole(run, 7 + 4 + 1)


def test_a_killed_writers_lock_is_stale_and_taken_over(tmp_path):
    run = _closed_run(tmp_path / "run")
    child = _start_holder(run, resume=True)
    child.kill()
    child.communicate(timeout=60)
    optimizer, rec = _attach(fresh_model(), run, resume=True)
    rec.close()
    [note] = dynamics.read_meta(run)["recovered"]
    assert note["stale_lock"]["pid"] == child.pid


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    _, first = _attach(fresh_model(), tmp_path / "run")
    with pytest.raises(RunStoreError, match="already open for writing in this process"):
        _attach(fresh_model(), tmp_path / "run", resume=True)
    first.close()
    _, again = _attach(fresh_model(), tmp_path / "run", resume=True)
    again.close()


def _write_lock(run, **owner):
    (run / "writer.lock").write_text(json.dumps({"since": "2026-01-01T00:00:00+00:00", **owner}))


def test_lock_of_a_live_process_or_another_host_is_never_taken_over(tmp_path):
    import platform
    run = _closed_run(tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(run, pid=sleeper.pid, host=platform.node())  # alive, though it holds no kernel lock
        with pytest.raises(RunStoreError, match=f"pid {sleeper.pid}"):
            _attach(fresh_model(), run, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(run, pid=1, host="elsewhere.example")
    with pytest.raises(RunStoreError, match="host 'elsewhere.example'.*delete the lock file"):
        _attach(fresh_model(), run, resume=True)
    _write_lock(run, pid=sleeper.pid, host=platform.node())  # now dead: stale
    _, rec = _attach(fresh_model(), run, resume=True)
    rec.close()
    assert dynamics.read_meta(run)["recovered"][0]["stale_lock"]["pid"] == sleeper.pid
    assert not (run / "writer.lock").exists()


# ---------------------------------------------------------------------------------------- disk full
def _mounted_tmpfs(mount, size) -> bool:
    """Mount a tmpfs of ``size`` at ``mount``: only as root, and not when DYNAMICS_TEST_NO_TMPFS is set (to run
    the fallback)."""
    if os.geteuid() != 0 or os.environ.get("DYNAMICS_TEST_NO_TMPFS"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs, when this process may mount one), else None."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not _mounted_tmpfs(mount, "1m"):
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _synthetic_flush(run, start, steps=50):
    meta = dynamics.read_meta(run)
    n = len(meta["parameters"])
    st = np.arange(start, start + steps, dtype=np.int64)
    rng = np.random.default_rng(start)
    params = pd.DataFrame({"step": np.repeat(st, n), "param_id": np.tile(np.arange(n, dtype=np.int32), steps),
                           **{q: rng.random(steps * n) for q in ("grad_sq", "param_sq", "update_sq", "lca")},
                           "finite": True, "has_grad": True})
    per_step = pd.DataFrame({"step": st, "recorded": True, "skipped": False, "clip_factor": np.nan,
                             "noise": rng.random(steps)})  # incompressible
    return {"params": params, "steps": per_step}


def test_disk_full_commits_nothing_partial_and_keeps_what_was_committed(tmp_path, small_disk, monkeypatch):
    from dynamics import store
    root = small_disk or tmp_path
    run = _closed_run(root / "run", steps=2)
    if small_disk is None:  # no tmpfs: a writer that fails as a full disk does, after the first part of a flush
        real, calls = pq.ParquetWriter.write_table, []

        def failing(self, *args, **kwargs):
            calls.append(1)
            if len(calls) > 5:
                raise OSError(28, "No space left on device")
            return real(self, *args, **kwargs)
        monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    writer = store.open_run(run, resume=True)
    committed = 2
    with pytest.raises(OSError):
        for _ in range(1000):
            writer.commit(_synthetic_flush(run, committed))
            committed += 50
    writer.release()
    monkeypatch.undo()
    per_param, per_step = dynamics.load(run)
    assert per_step["step"].tolist() == list(range(committed))
    assert per_param["step"].nunique() == committed
    assert not list(root.rglob("*.tmp"))
    committed_files = set(_committed_parts(run, "params")) | set(_committed_parts(run, "steps"))
    assert {p for t in ("params", "steps") for p in (run / t).iterdir()} == committed_files


# ------------------------------------------------------------------------- files changed on disk
def _commit_raw(run, table, arrow):
    """Commit a hand-made part as the next flush, past the writer's checks (a buggy or foreign writer)."""
    try:
        from dynamics.store import commits, parts
    except ImportError:  # a store without commit records: any part file in the folder is loaded
        pq.write_table(arrow, run / table / "part-000900.parquet")
        return
    run_id = dynamics.read_meta(run)["run_id"]
    trusted = commits.read_commits(run, run_id)
    flush = trusted[-1].flushes[1] + 1
    entry = parts.write_part(run, f"{table}/part-{flush:06d}.parquet", [arrow], arrow.schema, run_id=run_id,
                             table=table, flushes=(flush, flush), steps=parts.step_range(arrow), rows=arrow.num_rows)
    commits.write_commit(run, run_id, (flush, flush), {table: [entry]})


def _params_rows(steps, **columns):
    st = np.asarray(steps, dtype=np.int64)
    base = {"step": np.repeat(st, N_TENSORS), "param_id": np.tile(np.arange(N_TENSORS, dtype=np.int32), len(st)),
            **{q: np.ones(len(st) * N_TENSORS) for q in ("grad_sq", "param_sq", "update_sq", "lca")},
            "finite": True, "has_grad": True}
    base.update(columns)
    return pa.Table.from_pandas(pd.DataFrame({k: v for k, v in base.items() if v is not None}), preserve_index=False)


def _steps_rows(steps, **columns):
    frame = pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "recorded": True, "skipped": False,
                          "clip_factor": np.nan, **columns})
    return pa.Table.from_pandas(frame, preserve_index=False)


BAD_PARTS = {
    "params part without a column": ("params", lambda: _params_rows([7], finite=None), "missing column"),
    "params part with float steps": ("params", lambda: _params_rows([7]).set_column(
        0, "step", pa.array(np.repeat([7.0], N_TENSORS))), "'step' has type double"),
    "params part with an extra column": ("params", lambda: _params_rows([7], view="cc"), "unexpected column"),
    "params part with a tensor missing": ("params", lambda: _params_rows([7]).slice(1), "tensors are missing"),
    "params part repeating a row": ("params", lambda: pa.concat_tables([_params_rows([7])] * 2), "repeated rows"),
    "steps part with a text column": ("steps", lambda: _steps_rows([7], note="x"), "'note' has type"),
    "steps part with a tensor column": ("steps", lambda: _steps_rows([7], param_id=1.0), "reserved name"),
    "steps part with integer flags": ("steps", lambda: _steps_rows([7]).set_column(
        1, "recorded", pa.array([1], pa.int64())), "'recorded' has type int64"),
}


@pytest.mark.parametrize("case", BAD_PARTS)
def test_part_with_wrong_columns_or_rows_is_an_error_naming_it(tmp_path, case):
    table, make, message = BAD_PARTS[case]
    run = _closed_run(tmp_path / "run")
    _commit_raw(run, table, make())
    with pytest.raises(RunStoreError, match=rf"{table}/part-\d+\.parquet: .*{message}"):
        dynamics.load(run)


def test_committed_steps_twice_is_an_error_naming_the_record(tmp_path):
    run = _closed_run(tmp_path / "run")
    _commit_raw(run, "params", _params_rows([3]))  # step 3 is committed already
    with pytest.raises(RunStoreError, match=r"commits/\d+-\d+\.json: its params steps 3-3 overlap"):
        dynamics.load(run)


def test_params_steps_the_steps_table_lacks_is_an_error(tmp_path):
    run = _closed_run(tmp_path / "run")
    _commit_raw(run, "params", _params_rows([50]))
    with pytest.raises(RunStoreError, match=r"disagree on the recorded steps \(in params only: \[50\]"):
        dynamics.load(run)


def test_part_copied_in_again_or_from_another_run_changes_nothing(tmp_path):
    run, other = _closed_run(tmp_path / "run"), _closed_run(tmp_path / "other", seed=3)
    before = dynamics.load(run)
    part = _committed_parts(run)[0]
    (run / "params" / "part-000123.parquet").write_bytes(part.read_bytes())           # copied in twice
    foreign = _committed_parts(other)[0]
    (run / "params" / "part-000124.parquet").write_bytes(foreign.read_bytes())        # another run's part
    (run / "steps" / "part-000124.parquet").write_bytes(_committed_parts(other, "steps")[0].read_bytes())
    after = dynamics.load(run)
    for a, b in zip(before, after):
        pd.testing.assert_frame_equal(a, b)
    with pytest.warns(RuntimeWarning, match=r"never committed.*params/part-000124\.parquet"):
        _, rec = _attach(fresh_model(), run, resume=True)  # the writer removes what no commit names
    rec.close()
    assert not (run / "params" / "part-000123.parquet").exists()


def test_part_replaced_by_another_runs_is_an_error_naming_it(tmp_path):
    run, other = _closed_run(tmp_path / "run"), _closed_run(tmp_path / "other", seed=3)
    part = _committed_parts(run)[0]
    part.write_bytes(_committed_parts(other)[0].read_bytes())
    with pytest.raises(RunStoreError, match=rf"{part.name}: damaged or replaced after it was committed"):
        dynamics.load(run)


def test_commit_record_of_another_run_is_an_error_naming_it(tmp_path):
    run, other = _closed_run(tmp_path / "run"), _closed_run(tmp_path / "other", seed=3)
    [record] = sorted((other / "commits").glob("*.json"))
    data = json.loads(record.read_text())
    data["flushes"] = [99, 99]
    (run / "commits" / "000099-000099.json").write_text(json.dumps(data))
    with pytest.raises(RunStoreError, match=r"000099-000099\.json: a commit record of another run"):
        dynamics.load(run)


def test_single_bit_flips_anywhere_in_a_part_are_errors_naming_it(tmp_path):
    run = _closed_run(tmp_path / "run")
    part = _committed_parts(run)[0]
    data = part.read_bytes()
    for position in np.linspace(0, len(data) - 1, 48).astype(int):
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)
        part.write_bytes(bytes(flipped))
        with pytest.raises(RunStoreError, match=part.name):
            dynamics.load(run)
    part.write_bytes(data)
    _assert_whole(run, 7)


def test_parquet_page_checksums_are_written_and_verified(tmp_path):
    """Damage the commit record cannot see (its CRC-32 updated too): the pages' own checksums catch it."""
    import zlib
    run = _closed_run(tmp_path / "run")
    part = _committed_parts(run)[0]
    column = pq.ParquetFile(part).metadata.row_group(0).column(2)  # grad_sq
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data = bytearray(part.read_bytes())
    data[start + column.total_compressed_size - 3] ^= 0x10  # inside the column's last page's payload
    part.write_bytes(bytes(data))
    [record] = [p for p in (run / "commits").glob("*.json") if part.name in p.read_text()]
    entry = json.loads(record.read_text())
    entry["parts"]["params"][0].update(bytes=len(data), crc32=zlib.crc32(bytes(data)))
    record.write_text(json.dumps(entry))
    with pytest.raises(RunStoreError, match=rf"{part.name}: truncated or corrupt Parquet part .*checksum"):
        dynamics.load(run)


@pytest.mark.parametrize("keep", [0, 4, 100, -8, -1])
def test_truncated_part_record_or_meta_is_an_error_naming_it(tmp_path, keep):
    run = _closed_run(tmp_path / "run")
    part = _committed_parts(run)[0]
    for path in (part, *sorted((run / "commits").glob("*.json")), run / "meta.json"):
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
        with pytest.raises(RunStoreError, match=path.name):
            dynamics.load(run)
        path.write_bytes(data)


def test_missing_commit_record_is_an_error_naming_the_gap(tmp_path):
    from dynamics import store
    run = _closed_run(tmp_path / "run", steps=2)
    writer = store.open_run(run, resume=True)
    for start in (2, 52, 102):
        writer.commit(_synthetic_flush(run, start))
    writer.release()  # not compacted: flushes 1-3 each have their record
    (run / "commits" / "000002-000002.json").unlink()
    with pytest.raises(RunStoreError, match=r"commits: no commit record for flush\(es\) 2-2"):
        dynamics.load(run)
    with pytest.raises(RunStoreError, match=r"no commit record"):
        store.compact_run(run)  # never merged over the gap


def test_table_folder_replaced_by_a_file_is_an_error(tmp_path):
    import shutil
    run = _closed_run(tmp_path / "run")
    shutil.rmtree(run / "params")
    (run / "params").write_text("")
    with pytest.raises(RunStoreError, match=r"params: not a directory"):
        dynamics.load(run)


META_DAMAGE = {
    "no parameter table": (lambda m: m.pop("parameters"), r"no parameter table \('parameters'\)"),
    "empty parameter table": (lambda m: m.update(parameters=[]), "no parameter table"),
    "entry without a name": (lambda m: m["parameters"][0].pop("name"), "entry 0 has no str 'name'"),
    "depth as text": (lambda m: m["parameters"][1].update(depth="0"), "entry 1 has no int 'depth'"),
    "views not a list": (lambda m: m.update(views="cc"), r"no list of views"),
    "no run id": (lambda m: m.pop("run_id", None), r"no run id"),
    "not an object": (lambda m: (m.clear(), m.update(schema_version=None)), "unsupported schema version"),
}


@pytest.mark.parametrize("damage", META_DAMAGE)
def test_broken_meta_is_an_error_naming_the_file_not_a_keyerror(tmp_path, damage):
    change, message = META_DAMAGE[damage]
    run = _closed_run(tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    change(meta)
    (run / "meta.json").write_text(json.dumps(meta))
    for read in (dynamics.load, dynamics.load_runs, dynamics.read_meta):
        with pytest.raises(RunStoreError, match=rf"meta\.json: .*{message}"):
            read(run)


def test_stray_temporary_files_are_ignored_and_removed_on_resume(tmp_path):
    run = _closed_run(tmp_path / "run")
    for name in ("params/part-000050.parquet.tmp", "commits/000050-000050.json.tmp", "steps/part-000050.parquet"):
        (run / name).write_bytes(b"PAR1 half a file")
    _assert_whole(run, 7)
    with pytest.warns(RuntimeWarning, match=r"steps/part-000050\.parquet \(unreadable\)"):
        _, rec = _attach(fresh_model(), run, resume=True)
    rec.close()
    assert not list(run.rglob("*.tmp")) and not (run / "steps" / "part-000050.parquet").exists()


# ------------------------------------------------------------------------------ the command line
@pytest.fixture
def unreadable(monkeypatch):
    """Make a folder unreadable: ``chmod 000`` where it binds (not as root), else every call that reads it or
    anything inside it fails with EACCES, as it would then."""
    made = []

    def make(folder):
        if os.geteuid() != 0:
            folder.chmod(0)
            made.append(folder)
            return
        inside, listed = str(folder) + os.sep, str(folder)

        def denied(real, listing=False):
            def call(path, *args, **kwargs):
                name = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else None
                if isinstance(name, str) and (name.startswith(inside) or (listing and name.rstrip(os.sep) == listed)):
                    raise PermissionError(13, "Permission denied", name)
                return real(path, *args, **kwargs)
            return call
        import builtins
        import io
        for module, name, listing in ((os, "stat", False), (os, "lstat", False), (os, "open", False),
                                      (os, "listdir", True), (os, "scandir", True), (io, "open", False),
                                      (builtins, "open", False)):
            monkeypatch.setattr(module, name, denied(getattr(module, name), listing))
    yield make
    for folder in made:
        folder.chmod(0o755)


@pytest.mark.parametrize("inside", ["", "params", "commits"])
def test_cli_unreadable_folder_is_a_one_line_exit_2_naming_it(tmp_path, unreadable, capsys, inside):
    from dynamics import cli
    run = _closed_run(tmp_path / "run")
    unreadable(run / inside if inside else run)
    assert cli.main(["summary", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynamics: error: ") and err.count("\n") == 1
    assert str(run / inside if inside else run) in err and ("ermission denied" in err or "unreadable" in err)


def test_cli_output_path_that_cannot_be_written_is_a_one_line_exit_2(tmp_path, capsys):
    from dynamics import cli
    run = _closed_run(tmp_path / "run")
    (tmp_path / "taken").write_text("a file, not a folder")
    assert cli.main(["report", str(run), "--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "taken") in err
