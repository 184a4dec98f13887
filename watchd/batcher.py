"""Flushes the Baidu outbox: deletes in calls of at most 10, pushes in calls of at most 20.

A batch goes out at once when it is full, after a short linger (≤ 1 s) when it is not, and
immediately when draining (`sync`, shutdown). Items are marked "sending" in the journal
before the call and get one result each after it, so a crash mid-call resends at most that
one batch. Quota and configuration answers pause Baidu in the journal: nothing is sent
until the reset (quota) or a reload (configuration), and the queue is kept; so do calls
that fail one after another (an outage), until a growing backoff ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from watchd.errors import (
    AlreadyDoneError,
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
)
from watchd.indexers.base import Indexer, ItemResult, PushItem
from watchd.journal import FileRow, Journal, OutboxRow
from watchd.pipeline import Pipeline, utc_now
from watchd.quota import QuotaGate
from watchd.sidecar import SHOWS_BAIDU

log = logging.getLogger(__name__)

SERVICE = "baidu"


class BaiduBatcher:
    """Moves outbox items to the indexer; `run_forever` on its own thread, `drain` for one pass."""

    def __init__(
        self,
        journal: Journal,
        indexer: Indexer,
        pipeline: Pipeline,
        quota: QuotaGate,
        *,
        linger: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.indexer = indexer
        self.pipeline = pipeline
        self.quota = quota
        self.linger = linger
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first_seen: dict[str, float] = {}
        self._flushing = threading.Lock()
        self._unseen = 0  # pushes queued since the last look (see pushes_queued)
        self._will_look = False  # a deadline (a partial batch's linger, a pause) brings it back
        self.calls = 0
        self.outcomes: Counter[str] = Counter()

    def wake(self) -> None:
        """New items were queued: look at the outbox now."""
        self._wake.set()

    def pushes_queued(self, n: int = 1) -> None:
        """`n` pushes were queued: look at the outbox when that may fill a batch, or when no
        batch is lingering yet (the first push starts one); otherwise the linger's own
        deadline (or a pause's end) brings the batcher back. Spares a look (and its queries)
        per file."""
        self._unseen += n
        if self._unseen >= self.indexer.max_push or not self._will_look:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.flush(force=False)
            except Exception:
                log.exception("Baidu batcher failed; retrying in 30 s")
                wait = 30.0
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def drain(self) -> None:
        """Send everything that is due now, partial batches included (for `sync` and shutdown)."""
        self.flush(force=True)

    def flush(self, *, force: bool) -> float:
        """Send due batches; returns how long to sleep before the next look.

        One flush at a time (the batcher thread and `drain` may both call it), so an item
        is never picked for two calls.
        """
        with self._flushing:
            try:
                return self._flush(force)
            except sqlite3.Error:  # results could not be recorded: resend those items later
                with contextlib.suppress(sqlite3.Error):
                    self.journal.requeue_sending()
                raise

    def _flush(self, force: bool) -> float:
        while not self._stop.is_set() or force:
            self._unseen = 0
            self._will_look = False
            now = self.clock()
            resume = self.pipeline.paused_until(SERVICE)
            if resume is not None:
                self._will_look = True
                return min(60.0, max(1.0, resume - now))
            sent_full = False
            wait = 60.0
            for action, limit in (("delete", self.indexer.max_withdraw), ("push", self._push_limit())):
                rows = self.journal.due_outbox(action, now, limit)
                if not rows:
                    self._first_seen.pop(action, None)
                    continue
                if len(rows) < limit and not force:
                    first = self._first_seen.setdefault(action, now)
                    if now - first < self.linger:
                        wait = min(wait, first + self.linger - now)
                        self._will_look = True
                        continue
                self._first_seen.pop(action, None)
                self._send(action, rows)
                sent_full = sent_full or len(rows) == limit or force
            if not sent_full:
                next_due = self.journal.next_outbox_time()
                if next_due is not None and next_due > now:
                    wait = min(wait, next_due - now)
                return max(0.01, wait)
        return 0.0

    def _push_limit(self) -> int:
        """Items for the next pushPic: a full call, or what is left of today's quota, so the
        last units of a day are used. With none left, a full call's worth is picked anyway
        and `_send` pauses Baidu for them."""
        room = self.quota.room()
        return self.indexer.max_push if not room else min(room, self.indexer.max_push)

    def _send(self, action: str, rows: list[OutboxRow]) -> None:
        ids = [row.id for row in rows]
        quota = self.quota.reserve(len(rows)) if action == "push" else None
        if action == "push" and quota is None:
            self._pause_for_quota(ids, f"daily Baidu quota of {self.quota.limit} images used up")
            return
        ids, modifies = self.journal.mark_sending(ids, quota)
        if len(ids) < len(rows):  # cancelled since they were picked (a push of a deleted file)
            if quota is not None:
                self.quota.give_back(quota, len(rows) - len(ids))
            marked = set(ids)
            rows = [row for row in rows if row.id in marked]
            if not rows:
                return
        call: Callable[[], list[ItemResult]]
        if action == "push":
            items = [_push_item(row, row.id in modifies) for row in rows]
            call = lambda: self.indexer.push(items)  # noqa: E731
        else:
            keys = [row.baidu_id for row in rows]
            call = lambda: self.indexer.withdraw(keys)  # noqa: E731
        self.calls += 1
        try:
            results = self.pipeline.retry.call(call, f"Baidu {action} of {len(rows)}")
        except ServiceError as exc:
            if quota is not None and not exc.may_have_used_quota:
                self.quota.give_back(quota, len(ids))  # counted in `mark_sending`, refused or never sent
            self._call_failed(action, rows, exc)
            return
        self.pipeline.retry.note_success(SERVICE)
        if quota is not None:
            refused = sum(1 for result in results if result.error and not result.error.may_have_used_quota)
            if refused:
                self.quota.give_back(quota, refused)
        self._record(action, rows, results)

    def _call_failed(self, action: str, rows: list[OutboxRow], exc: ServiceError) -> None:
        """A whole call failed: pause for a quota or configuration answer, else back off."""
        ids = [row.id for row in rows]
        if isinstance(exc, QuotaError):
            self._pause_for_quota(ids, str(exc))
        elif isinstance(exc, ConfigurationError):
            reason = f"{exc}; Baidu waits until the config is reloaded (systemctl reload watchd)"
            self.journal.pause(SERVICE, "configuration", None, reason)
            self.journal.outbox_retry(ids, reason, 0.0)
            log.error("Baidu paused: %s", reason)
        else:
            attempts = max(row.attempts for row in rows) + 1
            self.journal.outbox_retry(ids, str(exc), self.pipeline.retry.next_attempt_at(attempts, exc))
            log.warning("Baidu %s of %d items deferred: %s", action, len(rows), exc)
            if isinstance(exc, TransientError):
                self.pipeline.note_transient_failure(SERVICE, exc)

    def _record(self, action: str, rows: list[OutboxRow], results: list[ItemResult]) -> None:
        when = utc_now()
        accepted = [
            row
            for row, result in zip(rows, results, strict=True)
            if result.error is None or isinstance(result.error, AlreadyDoneError)
        ]
        with self.pipeline.sidecar_lock:  # no move or deletion between a refresh and its record
            if action == "push":  # sidecars first: a crash in between only resends the push
                files = self.journal.get_by_ids([row.file_id for row in accepted])
                for row in accepted:
                    if row.file_id in files:
                        self._refresh_sidecar(files[row.file_id], when)
            self.journal.outbox_sent(accepted, when)
        self.outcomes["submitted" if action == "push" else "withdrawn"] += len(accepted)
        for row, result in zip(rows, results, strict=True):
            error = result.error
            if error is None or isinstance(error, AlreadyDoneError):
                continue
            if isinstance(error, PermanentFileError):
                self.journal.outbox_failed(row, error.message)
                self.outcomes["failed"] += 1
                path = self.journal.path_of(row.file_id)
                again = path if action == "push" else "--failed"  # a deleted file has no path to name
                log.warning(
                    "Baidu %s of %s (id %s) failed: %s; `watchd retry %s` sends it again",
                    action,
                    path,
                    row.baidu_id,
                    error.message,
                    again,
                )
            else:
                retry_at = self.pipeline.retry.next_attempt_at(row.attempts + 1, error)
                self.journal.outbox_retry([row.id], str(error), retry_at)
        log.info("Baidu %s: %d of %d items accepted", action, len(accepted), len(rows))

    def _refresh_sidecar(self, file_row: FileRow, pushed_at: str) -> None:
        """Add `baidu: {id, pushed_at}` to the sidecar of a freshly submitted file (only the
        formats that show it: rewriting the others would change nothing)."""
        if file_row.path is None or file_row.link is None or not os.path.lexists(file_row.path):
            return  # gone meanwhile (or its folder is not mounted): nothing to write next to
        try:
            rules = self.pipeline.resolver.rules_for(Path(file_row.path))
            if rules.sidecar_format in SHOWS_BAIDU:
                self.pipeline.write_sidecar(replace(file_row, pushed_at=pushed_at), rules)
        except Exception as exc:  # the submission itself succeeded; the sidecar catches up later
            log.warning("submitted %s to Baidu but could not update its sidecar: %s", file_row.path, exc)

    def _pause_for_quota(self, ids: list[int], reason: str) -> None:
        reset = self.quota.reset_at()
        self.journal.pause(SERVICE, "quota", reset, reason)
        self.journal.outbox_retry(ids, reason, reset)
        log.error(
            "Baidu paused until %s: %s (queue kept)",
            time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(reset)),
            reason,
        )


def _push_item(row: OutboxRow, modify: bool) -> PushItem:
    payload = dict(row.payload or {})
    payload["tags"] = tuple(payload.get("tags") or ())  # type: ignore[arg-type]
    payload["modify"] = modify
    return PushItem(**payload)  # type: ignore[arg-type]
