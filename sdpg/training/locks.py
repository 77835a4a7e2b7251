"""Advisory file locks (``fcntl.flock``): one writer per run folder, one submitter per spec, one creator of a
tracking store.

``flock`` locks belong to an open file description: they are released when the holder exits or is killed
(SIGKILL, OOM, node reboot of a local disk), so a crashed holder never leaves a stale lock behind. On NFS,
Linux emulates ``flock`` with POSIX byte-range locks, which are cluster-wide when the NFS lock manager runs.
The lock file holds the holder's host and pid (and a job id when there is one), for the message the next
process prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sdpg import fsio

RUN_LOCK = ".sdpg-run.lock"
"""Name of the lock file inside a run folder."""


class LockBusy(RuntimeError):
    """Another process holds the lock; ``holder`` is what it wrote in the lock file."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        who = ", ".join(f"{k} {v}" for k, v in holder.items() if v) or "another process"
        super().__init__(f"{path.parent}: already in use by {who}")


def _holder_info(extra: dict | None = None) -> dict:
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        info["slurm_job"] = job
    info.update(extra or {})
    return info


def read_holder(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def file_lock(
    path: str | Path, *, wait: bool = True, timeout: float | None = None, shared: bool = False, info: dict | None = None
) -> Iterator[Path]:
    """Hold an exclusive (or shared) lock on ``path`` (created if absent; its folder must exist) for the
    ``with`` block. ``wait=False`` raises ``LockBusy`` at once when another process holds it; ``timeout``
    raises it after that many seconds of waiting."""
    p = Path(path)
    fd = fsio.open_lock(p)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | (fcntl.LOCK_NB if (not wait or deadline is not None) else 0))
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    raise LockBusy(p, read_holder(p)) from None
                time.sleep(0.05)
        if not shared:
            data = json.dumps(_holder_info(info)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        yield p
    finally:
        os.close(fd)  # releases the lock


def run_folder_lock(output_dir: str | Path, *, wait: bool = False, info: dict | None = None):
    """The one-writer lock of a run folder (``<output_dir>/.sdpg-run.lock``); the folder is created."""
    d = Path(output_dir)
    fsio.ensure_dir(d)
    return file_lock(d / RUN_LOCK, wait=wait, info=info)


def is_locked(path: str | Path) -> bool:
    """True when some process holds ``path``'s lock now (a probe that takes and drops it)."""
    p = Path(path)
    if not p.exists():
        return False
    try:
        with file_lock(p, wait=False, shared=True):
            return False
    except LockBusy:
        return True
