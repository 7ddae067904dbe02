"""One process per run folder: an exclusive, non-blocking lock on ``<run>/.lock``.

The lock is an ``fcntl.flock`` on a file holding the owner's PID. The kernel releases it when the
process ends, however it ends (``kill -9`` included), so a stale lock never blocks a rerun; a
second process asking for a held lock fails at once with :class:`RunInUseError` naming the PID.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Optional

from autonorm.errors import AutoNormError

LOCK_FILE = ".lock"


class RunInUseError(AutoNormError):
    """Another process is using the run folder."""


class RunLock:
    """``with RunLock(run_dir): ...`` holds the folder's lock for the block."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunInUseError(
                f"run folder {self.run_dir} is in use by PID {owner}; wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, et: Optional[type], ev: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()
