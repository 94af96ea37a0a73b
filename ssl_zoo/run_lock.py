"""One writer per run directory: an advisory `flock` on `<run_dir>/.lock`, held for the life of a fit.

Why flock: the kernel drops it when the holder's process ends, however it ends (SIGKILL, OOM, a
node reboot), so a crashed run never leaves the directory locked; a leftover `.lock` file is just
a file. The holder writes `pid@host since time` into it for the message the next process shows.
The ranks of one DDP job are one writer: only rank 0 takes the lock (the other ranks never write).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ssl_zoo import distributed as dist_utils
from ssl_zoo.errors import RunDirBusyError



class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunDirBusyError naming its holder; never waits."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that is still starting"
            os.close(fd)
            raise RunDirBusyError(f"{self.run_dir} is in use by another training run ({holder}); wait for it to "
                                  f"end or stop it, or train under another train.name") from None
        except OSError as e:  # a filesystem without flock (some NFS/Lustre mounts): run, but say so
            warnings.warn(f"cannot lock {self.path} ({e.strerror}): nothing stops a second run from writing "
                          f"to this run directory at the same time")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, is_main: bool, device: torch.device) -> Iterator[None]:
    """Rank 0 holds the run directory's lock for the block; when it cannot, every rank raises
    (a collective, so the other ranks of the job do not wait forever for rank 0)."""
    lock = RunLock(run_dir)
    busy: RunDirBusyError | None = None
    if is_main:
        try:
            lock.acquire()
        except RunDirBusyError as e:
            busy = e
    if dist_utils.any_flags([busy is not None], device)[0]:
        raise busy or RunDirBusyError(f"{run_dir} is in use by another training run (see rank 0)")
    try:
        yield
    finally:
        lock.release()
