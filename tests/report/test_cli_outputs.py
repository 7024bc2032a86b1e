"""What `dynamics report` says and leaves behind when it cannot do what was asked (issue 26, items 5 and 6)."""
import pytest

from dynamics import cli, report
from dynamics.store import RunStoreError, expand_runs

from .layout import record_sweep


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two conditions, two seeds each, under one folder ``runs/`` (as the README's examples lay them out)."""
    return record_sweep(tmp_path_factory.mktemp("cli") / "runs", 2, 2)


def test_a_folder_of_runs_is_named_as_such_with_the_glob_to_use(runs, capsys):
    folder = runs[0].parent
    assert cli.main(["report", str(folder), "--out", str(folder.parent / "rep"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: a folder holding 4 runs, not a run itself" in err and f"{folder}/*" in err, err
    assert not (folder.parent / "rep").exists()
    with pytest.raises(RunStoreError, match="holding 4 runs"):
        expand_runs([folder])
    assert expand_runs([f"{folder}/*"]) == sorted(runs)  # the suggestion works


def test_a_failed_report_writes_nothing(runs, tmp_path, capsys):
    out = tmp_path / "new" / "rep"
    assert cli.main(["report", *map(str, runs), "--out", str(out), "--baseline", "nope", "--no-progress"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no folder, no figures/, no staging left behind
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="nope"):
        report.report(runs, existing, baseline="nope", progress=False)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_report_replaces_an_earlier_one_whole(runs, tmp_path):
    out = tmp_path / "rep"
    report.report(runs[:2], out, progress=False)
    (out / "figures" / "stale.png").write_bytes(b"")  # a figure an earlier report drew and this one does not
    (out / "notes.txt").write_text("mine")
    report.report(runs[:2], out, progress=False)
    names = {p.name for p in (out / "figures").iterdir()}
    assert "stale.png" not in names and "dynamics.png" in names and "dynamics.pdf" in names
    assert (out / "notes.txt").read_text() == "mine"  # files that are not the report's are left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
