"""The upload workers: threads that process the files the loop hands them, and the record
of which files are in their hands.

The loop thread is the only one that dispatches and the only one told when a file is
done, so the in-flight set needs no lock. A worker never decides what to do next: it
runs `process` on what it was given and reports the outcome as a `Done` fact.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from watchd import journal as j
from watchd.journal import Journal
from watchd.logs import redact
from watchd.schema import FileRow

log = logging.getLogger(__name__)

THREADS_PER_SLOT = 2  # while one thread uploads, its twin records an upload and writes a sidecar
PREFETCH = 2  # files dispatched per thread: one running, one waiting in the queue
INTERNAL_ERROR_RETRY = 60.0


@dataclass(frozen=True)
class Done:
    """A worker finished one file."""

    file_id: int
    outcome: str
    path: str | None = None  # where the file was when dispatched
    error: str | None = None  # with outcome "journal": why the journal could not be written


class UploadWorkers:
    """Threads running `process(file_id)`; each outcome goes to `report`.

    `process` holds one of `concurrency` upload slots only from its claim to the server's
    answer (see Pipeline.upload_slots), so there are more threads than slots: reading the
    file, recording the upload and writing the sidecar run while other uploads are in flight.
    """

    def __init__(
        self,
        concurrency: int,
        process: Callable[[int], str],
        report: Callable[[Done], None],
        journal: Journal,
        *,
        stopping: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.concurrency = concurrency
        self.in_flight: set[int] = set()
        self._process = process
        self._report = report
        self._journal = journal
        self._stopping = stopping
        self._clock = clock
        self._work: queue.SimpleQueue[tuple[int, str | None] | None] = queue.SimpleQueue()
        self._dispatched_at: dict[int, float] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.concurrency * THREADS_PER_SLOT):
            thread = threading.Thread(target=self._run, name=f"upload-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Let every thread finish its current file and exit; files still queued are skipped."""
        for _ in self._threads:
            self._work.put(None)
        self._threads = []

    def free(self) -> int:
        """How many more files may be dispatched now (each thread keeps one waiting)."""
        return self.concurrency * THREADS_PER_SLOT * PREFETCH - len(self.in_flight)

    def dispatch(self, rows: Iterable[FileRow]) -> None:
        for row in rows:
            self.in_flight.add(row.id)
            self._dispatched_at[row.id] = time.monotonic()
            self._work.put((row.id, row.path))

    def finished(self, file_id: int) -> float | None:
        """Take a reported file out of flight; the seconds since it was dispatched."""
        self.in_flight.discard(file_id)
        started = self._dispatched_at.pop(file_id, None)
        return None if started is None else time.monotonic() - started

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            file_id, path = work
            if self._stopping():  # not started: it stays queued in the journal for the next run
                self._report(Done(file_id, "skipped", path))
                continue
            outcome, error = self._outcome(file_id)
            self._report(Done(file_id, outcome, path, error))

    def _outcome(self, file_id: int) -> tuple[str, str | None]:
        try:
            return self._process(file_id), None
        except sqlite3.Error as exc:  # the journal is not writable: the loop waits for it, and says so once
            log.debug("cannot record the work on file #%d in the journal: %s", file_id, exc)
            return "journal", str(exc)
        except Exception as exc:  # a bug must not kill the worker or lose the file
            log.exception(
                "internal error processing file #%d; retrying in %.0f s", file_id, INTERNAL_ERROR_RETRY
            )
            with contextlib.suppress(sqlite3.Error):
                row = self._journal.get_by_id(file_id)  # an upload already recorded is not sent again
                state = j.UPLOADED if row is not None and row.state == j.UPLOADED else j.PENDING
                retry_at = self._clock() + INTERNAL_ERROR_RETRY
                reason = redact(f"internal error: {type(exc).__name__}: {exc}")[:300]  # not repr(): args
                self._journal.record_retry(file_id, state, "internal", reason, retry_at)
            return "retry", None
