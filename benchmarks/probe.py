"""Notice sidecars the moment they land, from the kernel's inotify events (no polling).

A sidecar "is on disk" when it is renamed into place (watchd, and the comparison script,
write a temp file and rename it) or closed after writing (a writer that is not atomic).
The stamp is `time.perf_counter()` when the benchmark thread wakes for the event, so the
same clock serves both ends of a latency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time
from pathlib import Path
from types import TracebackType

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class SidecarProbe:
    """Watches one directory; `wait(name)` returns when a file of that name first landed in it."""

    def __init__(self, folder: Path) -> None:
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(self._fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(errno, f"inotify_add_watch failed for {folder}")
        self._landed: dict[str, float] = {}

    def wait(self, name: str, timeout: float) -> float:
        """The perf_counter stamp at which `name` landed; raise TimeoutError after `timeout` s."""
        deadline = time.perf_counter() + timeout
        while name not in self._landed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"{name} did not appear within {timeout:g} s")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                self._read(time.perf_counter())
        return self._landed[name]

    def _read(self, stamp: float) -> None:
        try:
            buffer = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(buffer):
            _wd, _mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
            start = offset + _HEADER.size
            name = buffer[start : start + length].rstrip(b"\0").decode("utf-8", "surrogateescape")
            self._landed.setdefault(name, stamp)
            offset = start + length

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> SidecarProbe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
