"""A run's state in its folder: ``status.json`` records ``running`` (with process id, host, start
time and command), then ``complete``, ``failed`` or ``killed``.

A running run also holds a lock on ``.running.lock`` in its folder (``fcntl.flock``), which the
system releases when the process dies, however it dies. A run killed hard (``kill -9``, an
out-of-memory kill, a node lost) still says ``running`` but its lock is free (for a run from before
the lock: its recorded process on this host is gone), so it reads as ``interrupted``. An
interrupted, killed or failed run without ``metrics.json`` can be resumed in its own folder.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from lungcls.errors import LungclsError
from lungcls.runs.files import write_text_atomic

STATE_FILE = "status.json"
LOCK_FILE = ".running.lock"
# states a run folder can be resumed from in place (ckpt_path=<its last.ckpt> hydra.run.dir=<it>)
RESUMABLE = ("interrupted", "killed", "failed")

# the lock of each run this process runs (file descriptors kept open: the lock lasts as long as they do)
_LOCKS: dict[str, int] = {}


def _try_lock(fd: int) -> bool | None:
    """Take the lock if it is free: True, False when held, None where the file system has no locks."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def hold_lock(run_dir: str | Path) -> None:
    """Take the run folder's lock for this process (released by the system when the process ends,
    however it ends); another live process holding it is a one-line error. Where the file system
    has no locks, the run goes without one (its state then relies on the process id)."""
    if os.name != "posix" or str(run_dir) in _LOCKS:
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    for _ in range(20):  # another process may be testing the lock (lock_free) for an instant
        taken = _try_lock(fd)
        if taken:
            _LOCKS[str(run_dir)] = fd
            return
        if taken is None:
            os.close(fd)
            path.unlink(missing_ok=True)  # a lock file nobody can hold would read as a dead run
            return
        time.sleep(0.05)
    os.close(fd)
    raise LungclsError(f"{run_dir} holds a run that is still running; wait for it to end (or stop it), "
                       "or give another folder")


def release_lock(run_dir: str | Path) -> None:
    fd = _LOCKS.pop(str(run_dir), None)
    if fd is not None:
        os.close(fd)


def lock_free(folder: Path) -> bool | None:
    """Whether the run's lock is free (no live process holds it); None for a run without a lock."""
    path = folder / LOCK_FILE
    if os.name != "posix" or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _try_lock(fd)  # closing the descriptor below releases a lock taken here
    finally:
        os.close(fd)


def write_state(run_dir: str | Path, state: str, error: str | None = None) -> None:
    """Record the run's state (``running``, ``complete``, ``failed``, ``killed``) in status.json;
    ``running`` takes the folder's lock, the other states release it."""
    path = Path(run_dir) / STATE_FILE
    record = read_state(Path(run_dir)) or {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    if state == "running":
        hold_lock(run_dir)
        resumed = record.get("resumed", 0) + 1 if record else 0
        record = {"state": "running", "started": now, "pid": os.getpid(), "host": socket.gethostname(),
                  "command": _command(), **({"resumed": resumed} if resumed else {})}
    else:
        record.update(state=state, ended=now, error=error)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    if state != "running":
        release_lock(run_dir)


def _command() -> str:
    """How the run was started, as a user would type it again (``python -m lungcls.train ...`` or
    ``lungcls-train ...``)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if "-m" in argv:
        i = argv.index("-m")
        return shlex.join(["python", *argv[i:]])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def read_state(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(folder: Path, record: dict | None = None) -> str | None:
    """The run's state as it is now: status.json's, except that a ``running`` run whose process is
    gone (its lock free; without a lock, its process on this host gone) is ``interrupted``."""
    record = read_state(folder) if record is None else record
    state = (record or {}).get("state")
    if state != "running":
        return state
    free = lock_free(folder)
    if free is None:
        host, pid = record.get("host"), record.get("pid")
        free = host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid)
    return "interrupted" if free else "running"


def state_status(record: dict, folder: Path | None = None) -> str | None:
    """What status.json says, as a comparison status; None when the run completed."""
    state = run_state(folder, record) if folder is not None else record.get("state")
    if state == "complete":
        return None
    if state in ("failed", "killed"):
        return f"{state}: {record.get('error') or 'see the run log'}"
    if state == "interrupted":
        where = f"; resume it with ckpt_path={folder / 'checkpoints' / 'last.ckpt'} hydra.run.dir={folder}" if folder else ""
        return f"interrupted: process {record.get('pid')} on {record.get('host')} is gone{where}"
    if state == "running":
        return f"running on {record.get('host')} (process {record.get('pid')}): started {record.get('started')}"
    return f"incomplete: unknown state {state!r}"
