"""One worker per data directory on the embedded broker: an exclusive ``flock`` on ``<data dir>/worker.lock``.

The embedded deployment (``mona serve``: SQLite + the filesystem broker) is one machine and one worker; a second
``mona worker`` or ``mona serve`` on the same data directory would run jobs twice over the same files. The lock is
held by the worker's main process for its lifetime (forked pool processes share it) and released by the kernel
when the last of them exits, however they die. Workers on a server broker (Redis) share a data directory on
purpose (one per GPU on a ReadWriteMany volume) and take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from services.common.settings import WORKER_LOCK_NAME

LOCK_NAME = WORKER_LOCK_NAME
LOCKED_EXIT = 3
"""Exit status of ``mona worker`` / ``mona serve`` refused because another worker holds the lock."""


class WorkerLocked(RuntimeError):
    """Another worker holds the data directory's lock."""


def acquire_worker_lock(data_dir: Path) -> IO[str]:
    """Take ``<data_dir>/worker.lock`` (non-blocking) and write this pid in it; keep the returned file open."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir.resolve() / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise WorkerLocked(
            f"expected no other worker on data directory {data_dir.resolve()}, got the lock {path} held by pid {holder}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
