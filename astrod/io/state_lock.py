"""One daemon per state folder: an exclusive ``flock`` on ``<state>/astrod.lock`` held for the process's life.

The kernel drops the lock when the process ends, however it ends (SIGKILL, power cut), so a stale lock file
never blocks a restart. The file holds the holder's pid for the message a second daemon prints; it is written
in place, not atomically, because replacing the file would give it a new inode that the lock is not on.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from astrod.errors import AstrodError

LOCK_FILE = "astrod.lock"


class StateLocked(AstrodError):
    """Another process holds the state folder."""


class StateLock:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.path = state / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `StateLocked` naming the holder's pid."""
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateLocked(f"another astrod (pid {holder}) holds {self.state}") from err
        except OSError:
            os.close(fd)
            raise
        text = f"{os.getpid()}\n".encode("ascii")
        try:  # the pid is for the message only: a full disk must not stop the daemon that holds the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
