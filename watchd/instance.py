"""One watchd per state directory: a second daemon or `sync` on the same journal would do
the same work twice (two uploads of every new file), so the second one refuses to start."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from watchd.errors import WatchdError

LOCK_NAME = "watchd.lock"


class AlreadyRunning(WatchdError):
    """Another watchd holds the state directory."""


class InstanceLock:
    """An exclusive `flock` on `state_dir/watchd.lock`, released when the process ends
    (even by kill -9: the kernel drops the lock with the descriptor)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise AlreadyRunning(
                f"another watchd (pid {holder}) is already working on {state_dir}: stop it first, "
                "or give this config its own state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)
