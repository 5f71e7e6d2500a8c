"""One run per directory: an OS lock held for the run's lifetime, naming its holder to whoever comes second."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import StageError
from .layout import RunLayout


def _lock_holder(text: str) -> str:
    """``pid 123 on host, since 14:02:11: affinitynet run ...`` from a lock file's JSON (best effort)."""
    try:
        h = json.loads(text)
        command = h["command"] if len(h["command"]) <= 120 else h["command"][:117] + "..."
        return f"pid {h['pid']} on {h['host']}, since {h['started']}: {command}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path, is_main: bool = True):
    """Hold ``RUN_DIR/.affinitynet.lock`` (an OS lock, ``flock``) for the block: one run per directory at a time.

    The kernel drops the lock when the holding process ends, however it ends, so a crashed or killed run
    never blocks the next one; where the OS or file system has no locks (Windows; network mounts such as
    NFS without lockd or Lustre without ``flock``, which answer ENOLCK, ENOTSUP or ENOSYS) the run goes on
    unlocked, and the block gets a note saying so (for the log), else "". Only rank 0 locks; when another
    process holds the lock, every rank raises a StageError naming the directory and that process (written
    into the lock file by its holder).
    """
    from .dist import broadcast_object

    fd, problem, note = None, None, ""
    if is_main:
        fd = os.open(RunLayout(run_dir).lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no flock, no lock
            note = f"{run_dir}: no flock on this system; the run goes on unlocked"
        except BlockingIOError:
            holder = _lock_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            problem = (f"{run_dir}: run directory in use by another affinitynet process ({holder}); wait for it "
                       f"to end or stop it, then re-run")
            os.close(fd)
            fd = None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                os.close(fd)
                raise
            note = (f"{run_dir}: this file system does not lock files (flock: {e.strerror or os.strerror(e.errno)}); "
                    f"the run goes on unlocked, so start no second run in this directory until it ends")
        else:
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(["affinitynet", *sys.argv[1:]])}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    problem = broadcast_object(problem)
    if problem:
        raise StageError(problem)
    try:
        yield note
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays, naming the last holder
