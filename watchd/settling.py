"""Files still being written: taken in once their size and mtime stay put for `settle` seconds.

A close-after-write event says a file is finished. Polled folders, and writers that keep a
file open or modify it in place, give no such event; for those a file is finished when it
has stopped changing.

An empty file is not finished while a download into it is in progress: Firefox creates
`x.png` empty next to `x.png.part`, writes the .part and renames it over `x.png`, and the
placeholder would otherwise be reported empty ("copy the file again") before it is filled.
Every empty file therefore comes here first, however it was found (an event or a scan).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

from watchd.pipeline import TEMP_SUFFIXES

DOWNLOAD_PATIENCE = 60.0
"""Seconds a download's temp file may go unwritten and still count as in progress."""


class _Seen(NamedTuple):
    size: int
    mtime_ns: int
    deadline: float


class Settler:
    """The files seen changing, each with the time it is next looked at."""

    def __init__(self, settle: float, clock: Callable[[], float]) -> None:
        self.settle = settle
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def __bool__(self) -> bool:
        return bool(self._seen)

    def changed(self, path: str, wait: float | None = None) -> None:
        """The file changed: look again once it has been still for `wait` (default: `settle`)
        seconds."""
        try:
            info = os.lstat(path)
        except OSError:
            self._seen.pop(path, None)
            return
        deadline = self._clock() + (self.settle if wait is None else wait)
        self._seen[path] = _Seen(info.st_size, info.st_mtime_ns, deadline)

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def deadlines(self) -> list[float]:
        return [seen.deadline for seen in self._seen.values()]

    def settled(self, now: float) -> list[str]:
        """The files whose time has come and that have not changed since; the ones that did
        change, and placeholders of a download in progress, wait another `settle` seconds,
        and vanished ones are forgotten."""
        still: list[str] = []
        for path, seen in list(self._seen.items()):
            if seen.deadline > now:
                continue
            try:
                info = os.lstat(path)
            except OSError:
                del self._seen[path]
                continue
            if (info.st_size, info.st_mtime_ns) == (seen.size, seen.mtime_ns) and not _placeholder(
                path, info.st_size
            ):
                del self._seen[path]
                still.append(path)
            else:
                self._seen[path] = _Seen(info.st_size, info.st_mtime_ns, now + self.settle)
        return still


def _placeholder(path: str, size: int) -> bool:
    """Whether `path` is empty and a download into it (`path` + a temp suffix) is in progress:
    written to within DOWNLOAD_PATIENCE. One left behind by a crash or paused for long does
    not hold the empty file back for ever (nor `watchd sync`, which waits for settling files)."""
    if size:
        return False
    now = time.time()
    for suffix in TEMP_SUFFIXES:
        try:
            if now - os.lstat(path + suffix).st_mtime < DOWNLOAD_PATIENCE:
                return True
        except OSError:
            continue
    return False
