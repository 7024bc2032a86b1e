"""The run store: a run directory of ``meta.json`` and committed Parquet parts; writing one flush as one unit
under a writer lock (writer, parts, commits, lock, compaction), the tidy frames the recorder's buffers become
(frames), reading back as pandas after every check (loading)."""
from .loading import expand_runs, load, load_probe, load_runs, load_table, run_labels
from .lock import LockedRunError
from .rundir import RunStoreError, read_meta, write_meta
from .writer import RunWriter, compact_run, open_run

__all__ = ["RunStoreError", "LockedRunError", "read_meta", "write_meta", "open_run", "RunWriter", "compact_run",
           "load", "load_probe", "load_table", "load_runs", "expand_runs", "run_labels"]
