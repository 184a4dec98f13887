"""Flushes the Baidu outbox: deletes in calls of at most 10, pushes in calls of at most 20.

A batch goes out at once when it is full, after a short linger (≤ 1 s) when it is not, and
immediately when draining (the end of `sync`). Items are marked "sending" in the journal
before the call and get one result each after it, so a crash mid-call resends at most that
one batch, and so may a stop, which does not wait for a call in flight (`stop`). Quota and
configuration answers pause Baidu in the journal: nothing is sent until the reset (quota)
or a reload (configuration), and the queue is kept; so do calls that fail one after
another (an outage), until a growing backoff ends.

A push is recorded before its file's sidecar is rewritten to show it, as a refresh still
due (`Journal.outbox_sent`): a sidecar that cannot be written (a full or read-only disk),
or a crash before it is, is caught up by a retry with backoff here (whether or not Baidu is
paused) or by reconciliation, never by a second push.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from watchd.errors import (
    AFTER_THE_CONFIG_IS_FIXED,
    AlreadyDoneError,
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
    TransientError,
)
from watchd.indexers.base import Indexer, ItemResult, PushItem
from watchd.journal import DONE, FileRow, Journal, OutboxRow
from watchd.pipeline import Pipeline, utc_now
from watchd.quota import DailyRoom, QuotaGate
from watchd.schema import DAILY_QUOTA, REFRESH
from watchd.sidecar import SHOWS_BAIDU

log = logging.getLogger(__name__)

SERVICE = "baidu"
REFRESH_CHUNK = 100  # sidecar refreshes retried per look, so a long catch-up leaves room for batches


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
        flushing: threading.Lock | None = None,
    ) -> None:
        """`flushing`: the lock of one flush at a time, to share with the batcher this one
        replaces (a reload), whose last call may still be in flight (see `flush`)."""
        self.journal = journal
        self.indexer = indexer
        self.pipeline = pipeline
        self.quota = quota
        self.room = DailyRoom(journal, SERVICE, quota.tz, clock, indexer.max_push)
        self.linger = linger
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first_seen: dict[str, float] = {}
        self._flushing = flushing or threading.Lock()
        self._unseen = 0  # pushes queued since the last look (see pushes_queued)
        self._will_look = False  # a deadline (a partial batch's linger, a pause) brings it back
        # When a sidecar refresh is next due; 0: unknown, ask the journal. Only this batcher
        # schedules refreshes, so it spares a query per look while none is due.
        self._next_refresh = 0.0
        self.calls = 0
        self.outcomes: Counter[str] = Counter()
        self.news = 0  # how often it was told of new items: a drain begun before the last is stale

    def wake(self) -> None:
        """New items were queued: look at the outbox now."""
        self.news += 1
        self._wake.set()

    def pushes_queued(self, n: int = 1) -> None:
        """`n` pushes were queued: look at the outbox when that may fill a batch, or when no
        batch is lingering yet (the first push starts one); otherwise the linger's own
        deadline (or a pause's end) brings the batcher back. Spares a look (and its queries)
        per file."""
        self.news += 1
        self._unseen += n
        if self._unseen >= self.indexer.max_push or not self._will_look:
            self._wake.set()

    def stop(self) -> None:
        """Start no more calls; a call in flight still ends and is recorded, unless the process
        is gone first: its items, marked "sending", are then queued again at the next start
        (`Journal.recover`) and sent again (a push Baidu already has counts as done)."""
        self._stop.set()
        self._wake.set()

    def run_forever(self) -> None:
        journal_failing = False  # said once per spell: the engine reports the journal too
        while not self._stop.is_set():
            try:
                wait = self.flush(force=False)
                journal_failing = False
            except sqlite3.Error as exc:  # a full or read-only disk: nothing was half-recorded
                if self._stop.is_set():  # or closed at shutdown, under a call left behind
                    return
                if not journal_failing:
                    log.error(
                        "Baidu work waits for the journal, which cannot be written (%s); trying every 30 s",
                        exc,
                    )
                journal_failing = True
                wait = 30.0
            except Exception:
                log.exception("Baidu batcher failed; retrying in 30 s")
                wait = 30.0
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def drain(self) -> None:
        """Send everything that is due now, partial batches included (the end of `sync`), unless
        stopped: a stop ends it after the call in flight."""
        self.flush(force=True)

    def flush(self, *, force: bool) -> float:
        """Send due batches; returns how long to sleep before the next look.

        One flush at a time, also across a reload (the old batcher's last call may still be
        in flight: see `flushing`), so an item is never picked for two calls, and
        `requeue_sending` after a journal error never requeues items of another's call.
        """
        with self._flushing:
            try:
                return self._flush(force)
            except sqlite3.Error:  # results could not be recorded: resend those items later
                with contextlib.suppress(sqlite3.Error):
                    self.journal.requeue_sending()
                raise

    def _flush(self, force: bool) -> float:
        while not self._stop.is_set():
            self._unseen = 0
            self._will_look = False
            now = self.clock()
            wait = min(60.0, self._catch_up_sidecars(now))
            resume = self.pipeline.paused_until(SERVICE)
            if resume is not None:
                self._will_look = True
                return max(0.01, min(wait, max(1.0, resume - now)))
            sent_full = False
            for action, limit in (("delete", self.indexer.max_withdraw), ("push", self._push_limit())):
                if self._stop.is_set():  # stopped during the delete call: no new call
                    return 0.0
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
                return max(0.01, min(wait, self._next_refresh - self.clock()))  # a refresh deferred just now
        return 0.0

    def _push_limit(self) -> int:
        """Items for the next pushPic: a full call, or what is left of today's quota (the one
        configured, or the one Baidu's answers tell: `DailyRoom`), so the last units of a day
        are used. With none left of the configured one, a full call's worth is picked anyway
        and `_send` pauses Baidu for them."""
        room = self.quota.room()
        limit = self.indexer.max_push if not room else min(room, self.indexer.max_push)
        return min(limit, self.room.size())

    def _send(self, action: str, rows: list[OutboxRow]) -> None:
        ids = [row.id for row in rows]
        quota = self.quota.reserve(len(rows)) if action == "push" else None
        if action == "push" and quota is None:
            reason = f"daily Baidu quota of {self.quota.limit} images used up (daily_quota in the config)"
            self._pause_for_quota(ids, reason, DAILY_QUOTA)
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
            results = self.pipeline.retry.call(
                call,
                f"Baidu {action} of {len(rows)}",
                service=SERVICE,
                paused=lambda: self._stop.is_set() or self.pipeline.paused_until(SERVICE) is not None,
            )
        except ServiceError as exc:
            if quota is not None and not exc.may_have_used_quota:
                self.quota.give_back(quota, len(ids))  # counted in `mark_sending`, refused or never sent
                self.journal.pushes_refused([i for i in ids if i not in modifies])
            self._call_failed(action, rows, exc)
            return
        self.pipeline.retry.note_success(SERVICE)
        if quota is not None:
            refused = [
                row.id
                for row, result in zip(rows, results, strict=True)
                if result.error and not result.error.may_have_used_quota
            ]
            if refused:
                self.quota.give_back(quota, len(refused))
                self.journal.pushes_refused([i for i in refused if i not in modifies])
        taken = self._record(action, rows, results)
        if action == "push" and not self.room.taken(taken):
            learned = (
                f"Baidu's daily quota of {self.room.learned} images (learned from its answers) is used up"
            )
            self._pause_for_quota([], learned)

    def _call_failed(self, action: str, rows: list[OutboxRow], exc: ServiceError) -> None:
        """A whole call failed: pause for a quota or configuration answer, else back off."""
        ids = [row.id for row in rows]
        if self.pipeline.superseded and isinstance(exc, ConfigurationError):  # the token a reload replaced
            self.journal.outbox_retry(ids, str(exc), 0.0)
            log.warning("Baidu %s, sent before the reload, was refused: %s; tried again", action, exc)
        elif isinstance(exc, QuotaError) and action == "push" and self.room.refused(len(rows)):
            self.journal.outbox_retry(ids, str(exc), 0.0)
            log.info("Baidu refused %d images as over today's quota; trying %d", len(rows), self.room.size())
        elif isinstance(exc, QuotaError):
            learned = (
                f" after {self.room.learned} images today, learned as its daily quota"
                if action == "push"
                else ""
            )
            self._pause_for_quota(ids, f"{exc}{learned}")
        elif isinstance(exc, ConfigurationError):
            reason = f"{exc}; Baidu goes on {AFTER_THE_CONFIG_IS_FIXED}"
            self.journal.pause(SERVICE, "configuration", None, reason)
            self.journal.outbox_retry(ids, reason, 0.0)
            log.error("Baidu paused: %s", reason)
        else:
            attempts = max(row.attempts for row in rows) + 1
            self.journal.outbox_retry(ids, str(exc), self.pipeline.retry.next_attempt_at(attempts, exc))
            log.warning("Baidu %s of %d items deferred: %s", action, len(rows), exc)
            if isinstance(exc, TransientError) and not self.pipeline.superseded:
                self.pipeline.note_transient_failure(SERVICE, exc)

    def _record(self, action: str, rows: list[OutboxRow], results: list[ItemResult]) -> int:
        """Record a call's results; returns how many of its items Baidu took (or had)."""
        when = utc_now()
        accepted = [
            row
            for row, result in zip(rows, results, strict=True)
            if result.error is None or isinstance(result.error, AlreadyDoneError)
        ]
        with self.pipeline.sidecar_lock:  # no move or deletion between reading a row and its refresh
            refresh: list[tuple[OutboxRow, FileRow | None]] = []
            if action == "push":
                files = self.journal.get_by_ids([row.file_id for row in accepted])
                refresh = [  # `_refresh_sidecars` decides which sidecars are to show the push
                    (replace(row, state=REFRESH, attempts=0), replace(file, pushed_at=when, baidu_may_hold=1))
                    for row in accepted
                    if (file := files.get(row.file_id)) is not None
                ]
            self.journal.outbox_sent(accepted, when, {row.id for row, _file in refresh})
            self._refresh_sidecars(refresh)
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
        return len(accepted)

    def _catch_up_sidecars(self, now: float) -> float:
        """Retry the sidecar refreshes due at `now`; returns the seconds until the next is due."""
        if now >= self._next_refresh:
            if due := self.journal.due_refreshes(now, REFRESH_CHUNK):
                with self.pipeline.sidecar_lock:
                    files = self.journal.get_by_ids([row.file_id for row in due])
                    self._refresh_sidecars([(row, files.get(row.file_id)) for row in due])
            self._next_refresh = self.journal.next_refresh_time() or math.inf
        return max(0.0, self._next_refresh - now)

    def _refresh_sidecars(self, refreshes: list[tuple[OutboxRow, FileRow | None]]) -> None:
        """Rewrite these submitted files' sidecars to show `baidu: {id, pushed_at}`, with the
        `sidecar_lock` held; those that cannot be written now are retried with backoff.

        A refresh with nothing left to do is done: the file is gone (its sidecar with it),
        back in its sidecar step (which writes the Baidu block from the row), or its format
        does not show Baidu. One whose original is missing (an unmounted share) waits.
        """
        done: list[int] = []
        retries: list[tuple[int, str, float]] = []
        for item, file in refreshes:
            if file is None or file.path is None or file.state != DONE:
                done.append(item.id)
                continue
            try:
                self._write_baidu_block(file, file.path)
            except Exception as exc:  # the submission is recorded: only the sidecar waits
                at = self.pipeline.retry.next_attempt_at(item.attempts + 1)
                retries.append((item.id, str(exc), at))
                self._next_refresh = min(self._next_refresh, at)
                # No original: renamed or deleted while watchd was stopped, which reconciliation
                # settles (a move rewrites the sidecar, a deletion drops the refresh), or on a
                # share that is not mounted, which `status` reports. Nothing to warn about here.
                log.log(
                    logging.DEBUG if isinstance(exc, FileNotFoundError) else logging.WARNING,
                    "submitted %s to Baidu but could not update its sidecar: %s; retrying in %.0f s",
                    file.path,
                    exc,
                    at - self.clock(),
                )
                continue
            done.append(item.id)
            if item.attempts:
                log.info("updated the sidecar of %s with its Baidu submission", file.path)
        self.journal.sidecars_refreshed(done)
        if retries:
            self.journal.refresh_later(retries)

    def _write_baidu_block(self, file: FileRow, path: str) -> None:
        """Rewrite the sidecar from `file` if its format shows Baidu; raise what stops that now."""
        if not os.path.lexists(path):  # an unmounted share: no sidecar next to nothing
            raise FileNotFoundError(errno.ENOENT, "the original is not there", path)
        rules = self.pipeline.resolver.rules_for(Path(path))
        if rules.sidecar_format in SHOWS_BAIDU:
            self.pipeline.write_sidecar(file, rules)

    def _pause_for_quota(self, ids: list[int], reason: str, kind: str = "quota") -> None:
        reset = self.quota.reset_at()
        self.journal.pause(SERVICE, kind, reset, reason)
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
