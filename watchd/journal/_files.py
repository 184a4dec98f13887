"""The journal's files: reading them, and every step of their state machine."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator

from watchd.journal._outbox import queue_outbox, requeue_push
from watchd.journal._services import count_quota
from watchd.journal._store import Store, below
from watchd.schema import (
    DAILY_QUOTA,
    DELETED,
    DONE,
    FAILED,
    FORGOTTEN,
    HELD,
    PENDING,
    QUEUED,
    REFRESH,
    UPLOADED,
    UPLOADING,
    FileRow,
    UploadResult,
    new_baidu_id,
)


class Files(Store):
    """Files as the journal knows them: looked up, added, claimed, recorded, retired."""

    def get(self, path: str) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE path = ?", (path,))

    def get_by_id(self, file_id: int) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def sidecar_owner(self, sidecar: str, other_than: int) -> str | None:
        """The path of the file, other than `other_than`, whose sidecar is `sidecar` (no index:
        asked only when a new sidecar's name is already taken on disk)."""
        with self._lock:
            row = self._db.execute(
                "SELECT path FROM files WHERE sidecar_path = ? AND id != ? AND path IS NOT NULL LIMIT 1",
                (sidecar, other_than),
            ).fetchone()
        return str(row[0]) if row else None

    def get_by_ids(self, file_ids: Collection[int]) -> dict[int, FileRow]:
        """The rows of these files (those that still exist), by id: one query for a batch."""
        marks = ", ".join("?" * len(file_ids))
        return {
            row.id: row for row in self._many(f"SELECT * FROM files WHERE id IN ({marks})", list(file_ids))
        }

    def under(self, directory: str) -> list[FileRow]:
        """Live rows at or below `directory` (a directory path without trailing slash)."""
        return self._many("SELECT * FROM files WHERE path >= ? AND path < ? ORDER BY path", below(directory))

    def iter_root(self, root: str, batch: int = 2000) -> Iterator[tuple[str, int, int, str, str | None]]:
        """(path, size, mtime_ns, state, sidecar_path) of live rows under `root`, sorted by path.

        Paged by key so memory stays bounded however large the journal is.
        """
        last, upper = below(root)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT path, size, mtime_ns, state, sidecar_path FROM files WHERE path > ? AND path < ? "
                    "ORDER BY path LIMIT ?",
                    (last, upper, batch),
                ).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def unreadable_under(self, directory: str) -> set[str]:
        """Paths at or below `directory` of files that failed as unreadable (a chmod, which
        changes neither size nor mtime, may have fixed them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM files WHERE state = ? AND error_kind = ? AND path >= ? AND path < ?",
                (FAILED, "unreadable", *below(directory)),
            ).fetchall()
        return {row[0] for row in rows}

    def due_uploads(self, now: float, limit: int, exclude: set[int]) -> list[FileRow]:
        """Rows whose upload or sidecar step is due now, oldest first, except those in `exclude`
        (files already handed to a worker) and vanished ones (they wait to be paired as a move
        or retired, and a file that is not there cannot be sent)."""
        marks = ", ".join("?" * len(exclude))
        return self._many(
            f"SELECT * FROM files WHERE state IN (?, ?) AND next_attempt_at <= ? AND id NOT IN ({marks}) "
            "AND missing_since IS NULL ORDER BY next_attempt_at, id LIMIT ?",
            (PENDING, UPLOADED, now, *exclude, limit),
        )

    def next_due_time(self) -> float | None:
        """The earliest next-attempt time of queued uploads and sidecars, None if none is queued."""
        return self._minimum(
            "SELECT MIN(next_attempt_at) FROM files WHERE state IN (?, ?) AND missing_since IS NULL",
            (PENDING, UPLOADED),
        )

    def add(
        self, path: str, root: str, size: int, mtime_ns: int, sha256: str | None, *, state: str = PENDING
    ) -> FileRow:
        """Record a file never seen before (a new stable Baidu id is minted)."""
        now = time.time()
        baidu_id = new_baidu_id()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO files (path, last_path, root, state, size, mtime_ns, sha256, baidu_id, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, path, root, state, size, mtime_ns, sha256, baidu_id, now, now),
            )
        return FileRow.new(int(cur.lastrowid or 0), path, root, state, size, mtime_ns, sha256, baidu_id, now)

    def requeue(self, file_id: int, size: int, mtime_ns: int, sha256: str | None) -> None:
        """New content at a known path: upload again (same row, same Baidu id)."""
        self._due_again(file_id, PENDING, size, mtime_ns, sha256=sha256)

    def requeue_sidecar(self, file_id: int, size: int, mtime_ns: int) -> None:
        """A failed file whose content is what was uploaded: only its sidecar (and Baidu item)
        are due again, never a second upload."""
        self._due_again(file_id, UPLOADED, size, mtime_ns)

    def _due_again(self, file_id: int, state: str, size: int, mtime_ns: int, **fields: object) -> None:
        """Back to `state` with the new stamp, due now, its failures forgotten."""
        self._set(
            file_id,
            state=state,
            size=size,
            mtime_ns=mtime_ns,
            error_kind=None,
            reason=None,
            attempts=0,
            next_attempt_at=0.0,
            **fields,
        )

    def touch(self, file_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new size/mtime stamp (e.g. `touch`): remember it, do nothing else."""
        self._set(file_id, size=size, mtime_ns=mtime_ns)

    def claim_upload(self, file_id: int, sha256: str, quota: tuple[str, str] | None = None) -> None:
        """Intent: this file's bytes (with `sha256`) are about to be sent.

        `quota` (service, day) counts the send against that day's quota in the same
        transaction (see `QuotaGate.reserve`).
        """
        with self._write() as db:
            db.execute(
                "UPDATE files SET state = ?, sha256 = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = ?",
                (UPLOADING, sha256, time.time(), file_id),
            )
            if quota is not None:
                count_quota(db, *quota, 1)

    def record_uploaded(self, file_id: int, upload: UploadResult) -> None:
        """The upload succeeded; the sidecar is still to be written."""
        with self._write() as db:
            self._set_uploaded(db, file_id, upload)

    def record_done(
        self, file_id: int, sidecar_path: str, push: dict[str, object] | None, push_error: str | None = None
    ) -> None:
        """Sidecar written; with `push`, queue the Baidu submission in the same transaction.

        `push_error` records a submission that failed local validation (never sent).
        """
        with self._write() as db:
            self._set_done(db, file_id, sidecar_path, push, push_error)

    def record_published(
        self,
        file_id: int,
        upload: UploadResult,
        sidecar_path: str,
        push: dict[str, object] | None,
        push_error: str | None = None,
    ) -> None:
        """`record_uploaded` and `record_done` in one transaction, for a sidecar written
        straight after its upload."""
        with self._write() as db:
            self._set_uploaded(db, file_id, upload)
            self._set_done(db, file_id, sidecar_path, push, push_error)

    @staticmethod
    def _set_uploaded(db: sqlite3.Connection, file_id: int, upload: UploadResult) -> None:
        uploaded = upload.uploaded
        db.execute(
            "UPDATE files SET state = ?, host = ?, remote_id = ?, link = ?, short_link = ?, "
            "resolution = ?, uploaded_size = ?, uploaded_at = ?, uploaded_sha256 = ?, "
            "upload_count = upload_count + 1, error_kind = NULL, reason = NULL, attempts = 0, "
            "next_attempt_at = 0, updated_at = ? WHERE id = ?",
            (
                UPLOADED,
                upload.host,
                uploaded.remote_id,
                uploaded.link,
                uploaded.short_link,
                uploaded.resolution,
                uploaded.size,
                upload.when,
                upload.sha256,
                time.time(),
                file_id,
            ),
        )

    def _set_done(
        self,
        db: sqlite3.Connection,
        file_id: int,
        sidecar_path: str,
        push: dict[str, object] | None,
        push_error: str | None,
    ) -> None:
        now = time.time()
        db.execute(
            "UPDATE files SET state = ?, sidecar_path = ?, error_kind = NULL, reason = NULL, "
            "attempts = 0, next_attempt_at = 0, updated_at = ? WHERE id = ?",
            (DONE, sidecar_path, now, file_id),
        )
        if push is None and push_error is None:
            return
        baidu_id = str(push["id"]) if push is not None else self._baidu_id(db, file_id)
        if push is not None:
            queue_outbox(db, file_id, "push", baidu_id, push, now)
        else:
            queue_outbox(db, file_id, "push", baidu_id, None, now, FAILED, push_error)

    @staticmethod
    def _baidu_id(db: sqlite3.Connection, file_id: int) -> str:
        return str(db.execute("SELECT baidu_id FROM files WHERE id = ?", (file_id,)).fetchone()[0])

    def record_retry(self, file_id: int, state: str, kind: str, reason: str, at: float) -> None:
        """Put the file back to `state` (pending or uploaded) to be tried again at `at`.

        A retry of the sidecar step (uploaded) counts as an attempt, so its backoff grows;
        an upload's attempt was counted when it was claimed.
        """
        with self._write() as db:
            db.execute(
                "UPDATE files SET state = ?, error_kind = ?, reason = ?, next_attempt_at = ?, "
                "attempts = attempts + ?, updated_at = ? WHERE id = ?",
                (state, kind, reason, at, int(state == UPLOADED), time.time(), file_id),
            )

    def record_failed(self, file_id: int, kind: str, reason: str, *, sidecar_removed: bool = False) -> None:
        """A permanent failure: never retried automatically (`watchd retry` does it). With
        `sidecar_removed`, the sidecar it recorded is gone too."""
        fields: dict[str, object] = {"sidecar_path": None} if sidecar_removed else {}
        self._set(file_id, state=FAILED, error_kind=kind, reason=reason, **fields)

    def record_failed_new(
        self, path: str, root: str, size: int, mtime_ns: int, reason: str, kind: str = "permanent"
    ) -> FileRow:
        """A file that failed before it was ever queued (bad input): a row so `status` shows it."""
        row = self.get(path)
        if row is None:
            row = self.add(path, root, size, mtime_ns, None, state=FAILED)
        self._set(row.id, state=FAILED, size=size, mtime_ns=mtime_ns, error_kind=kind, reason=reason)
        return self.get_by_id(row.id) or row

    def failed_by_rules(self, directory: str) -> list[FileRow]:
        """Files at or below `directory` that failed because a rule file was broken."""
        return [row for row in self.under(directory) if row.state == FAILED and row.error_kind == "rules"]

    def move(
        self,
        file_id: int,
        new_path: str,
        root: str,
        sidecar_path: str | None,
        push: dict[str, object] | None = None,
    ) -> None:
        """The original was renamed or moved inside the watched folders; `push`, the Baidu item
        the move calls for (see `Pipeline.move`), is queued with it, so a kill cannot lose it."""
        with self._write() as db:
            if push is not None:
                requeue_push(db, file_id, push, time.time())
            db.execute(
                "DELETE FROM files WHERE path = ? AND id != ? AND state = ?", (new_path, file_id, FAILED)
            )
            db.execute(
                "UPDATE files SET path = ?, last_path = ?, root = ?, sidecar_path = ?, missing_since = NULL, "
                "updated_at = ? "
                "WHERE id = ?",
                (new_path, new_path, root, sidecar_path, time.time(), file_id),
            )

    def path_of(self, file_id: int) -> str:
        """Where the file is, or was last (a deleted file), for messages; "#id" if unknown."""
        with self._lock:
            row = self._db.execute("SELECT path, last_path FROM files WHERE id = ?", (file_id,)).fetchone()
        return str(row[0] or row[1]) if row else f"#{file_id}"

    def forget(self, file_id: int, *, withdraw: bool = False) -> None:
        """Drop a file (`watchd forget`): it will be treated as new if seen again.

        A file Baidu may hold (`baidu_may_hold`) is not dropped but becomes a tombstone, as if
        deleted, with its withdrawal queued if `withdraw`: its id is never lost while Baidu may
        show it, and the outbox keeps its file. Marked `FORGOTTEN`, it is not counted as a
        deleted file: the file may well be there. Every other trace is removed.
        """
        with self._write() as db:
            row = db.execute("SELECT baidu_may_hold FROM files WHERE id = ?", (file_id,)).fetchone()
            if row and row[0]:
                self._tombstone(db, file_id, withdraw)
                db.execute("UPDATE files SET error_kind = ? WHERE id = ?", (FORGOTTEN, file_id))
                return
            db.execute("DELETE FROM outbox WHERE file_id = ?", (file_id,))
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def tombstone(self, file_id: int, withdraw: bool) -> None:
        """The original is gone: keep the row (path NULL) and, if asked, queue its withdrawal.

        A push still waiting in the outbox is cancelled; one in flight is dropped when its call
        is over (`Outbox`), and since one flush runs at a time the withdrawal goes out after it.
        Only what Baidu may hold (`baidu_may_hold`: a push was ever marked sending) is withdrawn.
        """
        with self._write() as db:
            self._tombstone(db, file_id, withdraw)

    @staticmethod
    def _tombstone(db: sqlite3.Connection, file_id: int, withdraw: bool) -> None:
        now = time.time()
        db.execute(
            "UPDATE files SET path = NULL, state = ?, missing_since = NULL, updated_at = ? WHERE id = ?",
            (DELETED, now, file_id),
        )
        db.execute(  # and a sidecar refresh: the sidecar is gone with its original
            "DELETE FROM outbox WHERE file_id = ? AND action = 'push' AND state IN (?, ?, ?, ?)",
            (file_id, QUEUED, HELD, FAILED, REFRESH),
        )
        row = db.execute("SELECT baidu_id, baidu_may_hold FROM files WHERE id = ?", (file_id,)).fetchone()
        if withdraw and row and row[1]:
            queue_outbox(db, file_id, "delete", row[0], None, now)

    def release_deferred(self, kind: str) -> int:
        """Make work deferred for `kind` (e.g. a configuration pause) due again now, for a new
        configuration (a start, a reload) to try; returns how many files and Baidu items.

        Files carry the kind they were deferred for; Baidu items do not. A Baidu outage shows
        in the outbox only as items waiting out a backoff (a failed call defers its batch, a
        paused batcher defers nothing), so for "outage" every queued item is released too, as
        for "daily_quota" (a raised limit), whose pause deferred Baidu items to the reset.
        One deferred to a quota reset is then still held by the quota pause, which a new
        configuration does not lift. Failed items wait for `watchd retry`, and sidecar
        refreshes (a local write that failed, which no configuration fixes) keep their backoff.
        """
        with self._write() as db:
            n = db.execute(
                "UPDATE files SET next_attempt_at = 0 WHERE state IN (?, ?) AND error_kind = ?",
                (PENDING, UPLOADED, kind),
            ).rowcount
            if kind in ("outage", DAILY_QUOTA):
                n += db.execute(
                    "UPDATE outbox SET next_attempt_at = 0 WHERE state = ? AND next_attempt_at > 0", (QUEUED,)
                ).rowcount
            return n

    def retry_failed(self) -> int:
        """Queue every failed file and failed Baidu item again; returns how many."""
        with self._write() as db:
            return _retry(db, None)

    def retry_file(self, file_id: int) -> int:
        """Queue one file again if it failed, and its failed Baidu items; returns how many
        (0: nothing of it had failed)."""
        with self._write() as db:
            return _retry(db, file_id)


def _retry(db: sqlite3.Connection, file_id: int | None) -> int:
    """Failed files (all, or the one `file_id`) back to pending and their failed Baidu items
    back to the queue, in `db`'s open transaction; returns how many.

    A file that failed after its upload (its sidecar could not be written) goes back to the
    sidecar step, never to a second upload: the bytes it holds (`sha256`, unless it changed
    since, which intake notices) are the ones uploaded. A push that failed local validation
    was never sent and holds no payload: its file goes back to the sidecar step too, which
    builds the push again from the rules as they are now.
    """
    file, item, args = ("", "", ()) if file_id is None else (" AND id = ?", " AND file_id = ?", (file_id,))
    n = db.execute(
        "UPDATE files SET state = CASE WHEN link IS NOT NULL AND sha256 = uploaded_sha256 THEN ? ELSE ? END, "
        f"attempts = 0, next_attempt_at = 0 WHERE state = ?{file}",
        (UPLOADED, PENDING, FAILED, *args),
    ).rowcount
    n += db.execute(
        "UPDATE files SET state = ?, attempts = 0, next_attempt_at = 0 "
        "WHERE state = ? AND path IS NOT NULL AND id IN (SELECT file_id FROM outbox "
        f"WHERE state = ? AND action = 'push' AND payload IS NULL{item})",
        (UPLOADED, DONE, FAILED, *args),
    ).rowcount
    n += db.execute(
        "UPDATE outbox SET state = ?, next_attempt_at = 0 "
        f"WHERE state = ? AND (action = 'delete' OR payload IS NOT NULL){item}",
        (QUEUED, FAILED, *args),
    ).rowcount
    return n
