"""The run store: a run directory of ``meta.json`` and Parquet parts; writing (rundir), the tidy frames the
recorder's buffers become (frames), reading back as pandas (loading)."""
from .loading import expand_runs, load, load_probe, load_runs, run_labels
from .rundir import RunStoreError, last_step, prepare_run_dir, read_meta, write_meta, write_part

__all__ = ["RunStoreError", "read_meta", "write_meta", "prepare_run_dir", "write_part", "last_step", "load",
           "load_probe", "load_runs", "expand_runs", "run_labels"]
