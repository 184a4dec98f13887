"""The journal's Baidu outbox: push and delete intents, one row per item, until sent."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Sequence

from watchd.journal._services import count_quota
from watchd.journal._store import Store, below
from watchd.schema import DELETED, FAILED, HELD, QUEUED, REFRESH, SENDING, OutboxRow

# A push whose file was deleted (tombstoned) meanwhile: when its call is over it is dropped, never
# queued again, so the withdrawal `Files.tombstone` queued is the last thing Baidu hears of the id.
_PUSH_OF_DELETED = f"action = 'push' AND file_id IN (SELECT id FROM files WHERE state = '{DELETED}')"
# A push queued after this one for the same file (it was renamed or rewritten while this one was
# in flight): if this one's call failed, sending it again later would overwrite the newer item
# with the old title or image, so it is dropped instead; the newer one says all there is to say.
_PUSH_SINCE_SUPERSEDED = (
    "action = 'push' AND EXISTS (SELECT 1 FROM outbox AS newer "
    "WHERE newer.file_id = outbox.file_id AND newer.action = 'push' AND newer.id > outbox.id)"
)
_DROPPED_WHEN_BACK = f"(({_PUSH_OF_DELETED}) OR ({_PUSH_SINCE_SUPERSEDED}))"


def requeue_push(db: sqlite3.Connection, file_id: int, payload: dict[str, object], now: float) -> None:
    """Queue a push of a file with `payload` in `db`'s open transaction. One not sent yet takes
    the payload in place, keeping its backoff; one on its way is followed by this one."""
    if not _update_unsent_push(db, file_id, payload, now):
        (baidu_id,) = db.execute("SELECT baidu_id FROM files WHERE id = ?", (file_id,)).fetchone()
        queue_outbox(db, file_id, "push", baidu_id, payload, now)


def _update_unsent_push(db: sqlite3.Connection, file_id: int, payload: dict[str, object], now: float) -> int:
    """Give the file's push that waits to be sent `payload`; returns 1 if there was one, else 0."""
    return db.execute(
        "UPDATE outbox SET payload = ?, updated_at = ? WHERE file_id = ? AND action = 'push' AND state = ?",
        (json.dumps(payload), now, file_id, QUEUED),
    ).rowcount


def _drop_unsent(db: sqlite3.Connection, file_id: int, action: str) -> None:
    """Drop the file's `action` that waits to be sent or failed: not one on its way."""
    db.execute(
        "DELETE FROM outbox WHERE file_id = ? AND action = ? AND state IN (?, ?, ?)",
        (file_id, action, QUEUED, HELD, FAILED),
    )


def queue_outbox(
    db: sqlite3.Connection,
    file_id: int,
    action: str,
    baidu_id: str,
    payload: dict[str, object] | None,
    now: float,
    state: str = QUEUED,
    reason: str | None = None,
) -> None:
    """Queue `action` for a file in `db`'s open transaction, replacing its unsent one."""
    _drop_unsent(db, file_id, action)
    db.execute(
        "INSERT INTO outbox (file_id, action, baidu_id, payload, state, reason, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (file_id, action, baidu_id, json.dumps(payload) if payload else None, state, reason, now, now),
    )


class Outbox(Store):
    """Baidu items from queued to sending to gone (sent) or failed; a sent push whose sidecar
    does not show it yet stays as a refresh until it does."""

    def due_outbox(self, action: str, now: float, limit: int) -> list[OutboxRow]:
        return self._outbox_rows(
            "state = ? AND action = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (QUEUED, action, now, limit),
        )

    def _outbox_rows(self, where: str, args: Sequence[object]) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, file_id, action, baidu_id, payload, state, attempts, next_attempt_at, reason "
                f"FROM outbox WHERE {where}",
                args,
            ).fetchall()
        return [
            OutboxRow(
                id=r[0],
                file_id=r[1],
                action=r[2],
                baidu_id=r[3],
                payload=json.loads(r[4]) if r[4] else None,
                state=r[5],
                attempts=r[6],
                next_attempt_at=r[7],
                reason=r[8],
            )
            for r in rows
        ]

    def queued_pushes(self, directory: str | None = None) -> list[OutboxRow]:
        """Pushes waiting to be sent, of files at or below `directory` (None: of all files)."""
        if directory is None:
            return self._outbox_rows("state = ? AND action = 'push'", (QUEUED,))
        inside = "file_id IN (SELECT id FROM files WHERE path >= ? AND path < ?)"
        return self._outbox_rows(f"state = ? AND action = 'push' AND {inside}", (QUEUED, *below(directory)))

    def update_unsent_push(self, file_id: int, payload: dict[str, object]) -> None:
        """Give the file's push that waits to be sent a new item (its rules changed)."""
        with self._write() as db:
            _update_unsent_push(db, file_id, payload, time.time())

    def cancel_unsent_push(self, file_id: int) -> None:
        """Drop the file's push that waits to be sent, or failed unsent: it was moved where
        the rules submit nothing (a drafts folder). One on its way is past recalling."""
        with self._write() as db:
            _drop_unsent(db, file_id, "push")

    def push_queued(self, file_id: int) -> bool:
        """Whether a push of the file waits to be sent or is on its way."""
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM outbox WHERE file_id = ? AND action = 'push' AND state IN (?, ?, ?)",
                    (file_id, QUEUED, SENDING, HELD),
                ).fetchone()
                is not None
            )

    def outbox_depth(self, action: str | None = None) -> int:
        """Items waiting to be sent (of one `action`), or with no `action`, all Baidu work left,
        sidecars still to show a submission included (`sync` reports it as still queued)."""
        if action:
            sql, args = "state IN (?, ?, ?) AND action = ?", (QUEUED, SENDING, HELD, action)
        else:
            sql, args = "state IN (?, ?, ?, ?)", (QUEUED, SENDING, HELD, REFRESH)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM outbox WHERE {sql}", args).fetchone()[0])

    def next_outbox_time(self) -> float | None:
        """The earliest next-attempt time of queued Baidu items, None if none is queued."""
        return self._minimum("SELECT MIN(next_attempt_at) FROM outbox WHERE state = ?", (QUEUED,))

    def mark_sending(
        self, ids: Sequence[int], quota: tuple[str, str] | None = None
    ) -> tuple[list[int], set[int]]:
        """Intent: these outbox items are about to be sent. Returns those still queued, the
        only ones to send (a push cancelled since it was picked, its file deleted, is not),
        and the pushes among them of files Baidu may already hold: they say `modify`.

        That is decided here, not when the push was queued: a file rewritten while its first
        upload ran queues its second push before the first one goes out.
        From here Baidu may hold a pushed id, whatever becomes of the call, so `baidu_may_hold`
        is set in the same transaction: a later push of the file says `modify`, a deletion
        withdraws it. `quota` (service, day) counts the items against that day's quota.
        """
        now = time.time()
        with self._write() as db:
            marked = [
                i
                for i in ids
                if db.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, updated_at = ? "
                    "WHERE id = ? AND state = ?",
                    (SENDING, now, i, QUEUED),
                ).rowcount
            ]
            modifies = {
                i
                for i in marked
                if db.execute(
                    "SELECT 1 FROM outbox JOIN files ON files.id = outbox.file_id "
                    "WHERE outbox.id = ? AND action = 'push' AND baidu_may_hold",
                    (i,),
                ).fetchone()
            }
            db.executemany(
                "UPDATE files SET baidu_may_hold = 1 "
                "WHERE id = (SELECT file_id FROM outbox WHERE id = ? AND action = 'push')",
                [(i,) for i in marked],
            )
            if quota is not None:
                count_quota(db, *quota, len(ids))
        return marked, modifies

    def pushes_refused(self, ids: Collection[int]) -> None:
        """Baidu answered these pushes (outbox ids, none of them a modification) with an error
        that stores nothing: their files are again ones Baidu does not hold, as before
        `mark_sending` assumed the worst, so their next push says "0", not `modify`.
        Not while another push of the same file is on its way (a reload's second batcher)."""
        with self._write() as db:
            db.executemany(
                "UPDATE files SET baidu_may_hold = 0 WHERE pushed_at IS NULL "
                "AND id = (SELECT file_id FROM outbox WHERE id = ? AND action = 'push') "
                "AND NOT EXISTS (SELECT 1 FROM outbox AS other WHERE other.file_id = files.id "
                "AND other.action = 'push' AND other.state = ? AND other.id != ?)",
                [(i, SENDING, i) for i in ids],
            )

    def outbox_sent(self, rows: Sequence[OutboxRow], when: str, refresh: Collection[int] = ()) -> None:
        """Baidu has these items (or, for deletes, no longer has them): one transaction.

        A sent item leaves the outbox (the file's `pushed_at` says when): nothing reads it
        again, and kept with its payload it cost ~1 KB a file for ever. A withdrawn id is no
        longer held by Baidu. The pushes in `refresh` (ids) stay, without their payload, as
        refreshes due now: their files' sidecars are to show the submission, and until
        `sidecars_refreshed` says they do, a crash or a full disk leaves that to a retry
        (`due_refreshes`, reconciliation), never to a second push.
        """
        with self._write() as db:
            gone = [(row.id,) for row in rows if row.id not in refresh]
            db.executemany("DELETE FROM outbox WHERE id = ?", gone)
            db.executemany(
                "UPDATE outbox SET state = ?, payload = NULL, attempts = 0, next_attempt_at = 0, "
                "reason = NULL, updated_at = ? WHERE id = ?",
                [(REFRESH, time.time(), i) for i in refresh],
            )
            db.executemany(
                "UPDATE files SET pushed_at = ?, baidu_may_hold = ? WHERE id = ?",
                [(when, 1, row.file_id) if row.action == "push" else (None, 0, row.file_id) for row in rows],
            )

    def due_refreshes(self, now: float, limit: int) -> list[OutboxRow]:
        """Refreshes of sidecars (see `outbox_sent`) due at `now`, oldest first."""
        return self._outbox_rows(
            "state = ? AND action = 'push' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (REFRESH, now, limit),
        )

    def next_refresh_time(self) -> float | None:
        """When the next refresh of a sidecar is due, None if none is left."""
        return self._minimum("SELECT MIN(next_attempt_at) FROM outbox WHERE state = ?", (REFRESH,))

    def stale_sidecars(self, directory: str) -> set[str]:
        """Paths at or below `directory` whose sidecars do not show their Baidu submission yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT files.path FROM outbox JOIN files ON files.id = outbox.file_id "
                "WHERE outbox.state = ? AND files.path >= ? AND files.path < ?",
                (REFRESH, *below(directory)),
            ).fetchall()
        return {row[0] for row in rows}

    def sidecars_refreshed(self, ids: Collection[int]) -> None:
        """These refreshes are done (or moot: the file is gone, or its sidecar never shows Baidu)."""
        if ids:
            with self._write() as db:
                db.executemany("DELETE FROM outbox WHERE id = ? AND state = ?", [(i, REFRESH) for i in ids])

    def sidecar_refreshed(self, file_id: int) -> None:
        """The file's sidecar was rewritten from its row: whatever refresh it waited for is done."""
        with self._write() as db:
            db.execute("DELETE FROM outbox WHERE file_id = ? AND state = ?", (file_id, REFRESH))

    def refresh_later(self, retries: Sequence[tuple[int, str, float]]) -> None:
        """Refreshes that failed: (id, reason, when to try again), each counted as an attempt."""
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET reason = ?, next_attempt_at = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = ? AND state = ?",
                [(reason, at, time.time(), i, REFRESH) for i, reason, at in retries],
            )

    def outbox_retry(self, ids: Sequence[int], reason: str, at: float) -> None:
        """Queue these items again at `at` (pushes of files deleted or pushed anew meanwhile are
        dropped)."""
        with self._write() as db:
            db.executemany(f"DELETE FROM outbox WHERE id = ? AND {_DROPPED_WHEN_BACK}", [(i,) for i in ids])
            db.executemany(
                "UPDATE outbox SET state = ?, reason = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(QUEUED, reason, at, time.time(), i) for i in ids],
            )

    def outbox_failed(self, row: OutboxRow, reason: str) -> None:
        """A permanent failure, kept for `watchd retry` (a push of a file deleted meanwhile is
        dropped: retrying it would bring the id back)."""
        with self._write() as db:
            db.execute(f"DELETE FROM outbox WHERE id = ? AND {_DROPPED_WHEN_BACK}", (row.id,))
            db.execute(
                "UPDATE outbox SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                (FAILED, reason, time.time(), row.id),
            )

    def requeue_sending(self) -> int:
        """Outbox items marked "sending" whose call is over (or died) go back to the queue,
        except pushes of files deleted or pushed anew meanwhile, which are dropped."""
        with self._write() as db:
            db.execute(f"DELETE FROM outbox WHERE state = ? AND {_DROPPED_WHEN_BACK}", (SENDING,))
            return db.execute(
                "UPDATE outbox SET state = ?, next_attempt_at = 0 WHERE state = ?", (QUEUED, SENDING)
            ).rowcount

    def outbox_failures(self, limit: int = 20) -> list[OutboxRow]:
        return self._outbox_rows("state = ? ORDER BY updated_at DESC LIMIT ?", (FAILED, limit))

    def refreshes_waiting(self, limit: int = 20) -> tuple[int, list[OutboxRow]]:
        """How many sidecars wait to show their Baidu submission, and the latest `limit` of
        those whose rewrite failed (with its reason and next try), for `status`."""
        with self._lock:
            total = int(
                self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = ?", (REFRESH,)).fetchone()[0]
            )
        failed = self._outbox_rows(
            "state = ? AND attempts > 0 ORDER BY updated_at DESC LIMIT ?", (REFRESH, limit)
        )
        return total, failed
