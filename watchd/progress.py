"""Progress of `watchd sync`: a live bar with rate and ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress

PLAIN_EVERY_SECONDS = 10.0


class SyncProgress:
    """Receives `found(n)` (work discovered) and `advance(outcome, path)` (one file handled)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.handled = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Progress | None = None
        self._task = None
        if stream.isatty():
            # rich only for a terminal: importing it costs ~40 ms of every unattended sync.
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("sync"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f}/s"),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            self._task = self._bar.add_task("sync", total=None, rate=0.0)

    def __enter__(self) -> SyncProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def found(self, n: int) -> None:
        self.total += n
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=self.total)

    def advance(self, outcome: str, path: str) -> None:
        self.handled += 1
        now = time.monotonic()
        rate = self.handled / max(now - self.started, 1e-6)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.handled, rate=rate)
        elif now - self._last_line >= PLAIN_EVERY_SECONDS or self.handled == self.total:
            self._last_line = now
            total = f"/{self.total}" if self.total else ""
            print(f"sync: {self.handled}{total} files handled ({rate:.1f}/s)", file=self.stream, flush=True)
