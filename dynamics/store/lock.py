"""The writer lock of a run directory: one live writer per run, so two cannot number parts from the same index.

``RUN/writer.lock`` holds its owner as JSON (pid, host, boot id, the process's start time, since when) and, where
the operating system offers it, a POSIX record lock (``fcntl.lockf``) that the kernel drops when the owner dies,
SIGKILL included. A lock is *stale*, and taken over, only when both say so: the record lock is free and the owner
named in the file is gone from this host (its pid is not running, or runs a different process since, or the host
has rebooted). A lock named by another host is never taken over: this host cannot tell whether that process lives.
Within one process a run open for writing is refused before the file is touched (POSIX locks do not separate
the threads of one process, and closing any descriptor of the file would drop them).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

from ..schema import LOCK_FILE
from .rundir import RunStoreError

try:  # POSIX only; elsewhere the lock falls back to the owner's pid
    import fcntl
except ImportError:  # pragma: no cover - not on the test platforms
    fcntl = None

_HELD: set[str] = set()  # run directories this process writes now (real paths)


class LockedRunError(RunStoreError):
    """Another live writer holds the run directory; the message names it and the lock file."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot; Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        return True
    return True


def owner_record() -> dict:
    """Who this process is, as the lock file records it."""
    return {"pid": os.getpid(), "host": platform.node(), "boot_id": _boot_id(),
            "process_start": _process_start(os.getpid()),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat()}


def owner_gone(owner: dict) -> bool:
    """Is the process named by a lock record certainly not running? Only answerable on its own host."""
    if owner.get("host") != platform.node():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # an unreadable record names nobody
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return True  # the host rebooted since
    if not _pid_running(pid):
        return True
    start = _process_start(pid)
    return bool(owner.get("process_start") and start and owner["process_start"] != start)  # pid reused


def _describe(owner: dict | None) -> str:
    if not owner:
        return "a process that left no owner record"
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('since')}"


def holder(run_dir: Path) -> tuple[str, bool]:
    """What the run's lock file says, for a message (read only, nothing is taken): the phrase, and whether a
    live writer (or one on another host) may hold it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "no writer lock", False
    except (OSError, UnicodeDecodeError):
        return f"an unreadable writer lock ({path})", True
    try:
        owner = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        owner = {}
    if not isinstance(owner, dict) or not owner:
        return "a writer lock that names no owner", False
    if os.path.realpath(run_dir) in _HELD:
        return f"its writer lock held by this process ({_describe(owner)})", True
    if owner_gone(owner):
        return f"its writer lock stale ({_describe(owner)} is gone)", False
    return f"its writer lock held ({_describe(owner)}, which may still be writing)", True


def _read_record(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _try_kernel_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system or platform cannot lock."""
    if fcntl is None:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError:  # ENOLCK and the like: no locking here
        return None


class WriterLock:
    """The held lock of one run directory. ``stale``: the record of a dead owner it took over, if any."""

    def __init__(self, run_dir: Path, fd: int, stale: dict | None) -> None:
        self.run_dir, self.path, self._fd, self.stale = run_dir, run_dir / LOCK_FILE, fd, stale
        self._key = os.path.realpath(run_dir)

    @classmethod
    def acquire(cls, run_dir: Path) -> "WriterLock":
        """Take the run's lock, or raise :class:`LockedRunError` naming the live writer and the lock file."""
        key = os.path.realpath(run_dir)
        if key in _HELD:
            raise LockedRunError(f"{run_dir}: already open for writing in this process (a recorder that was not "
                                 f"closed): close() it before attaching another")
        path = run_dir / LOCK_FILE
        for _ in range(10):  # the file may be replaced between open and lock by a releasing owner
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                lock = cls._claim(run_dir, path, fd)
            except BaseException:
                os.close(fd)
                raise
            if lock is not None:
                _HELD.add(key)
                return lock
            os.close(fd)
        raise LockedRunError(f"{path}: the lock file keeps changing; another writer is opening this run")

    @classmethod
    def _claim(cls, run_dir: Path, path: Path, fd: int) -> "WriterLock | None":
        """Claim the open lock file ``fd``; None when the path no longer names it (retry)."""
        kernel = _try_kernel_lock(fd)
        previous = _read_record(fd)
        if kernel is False or (previous is not None and not owner_gone(previous)):
            raise LockedRunError(f"{run_dir}: another writer holds this run ({_describe(previous)}; lock file "
                                 f"{path}). Two writers would overwrite each other's parts: wait until it closes, "
                                 f"or, if that process no longer runs, delete the lock file")
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return None
        except FileNotFoundError:
            return None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner_record()).encode())
        os.fsync(fd)
        return cls(run_dir, fd, previous)

    def release(self) -> None:
        """Remove the lock file and let go of it. Idempotent."""
        if self._fd is None:
            return
        try:
            try:
                os.unlink(self.path)  # while still locked: a waiting opener then sees another inode and retries
            except FileNotFoundError:
                pass
        finally:
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self._key)

