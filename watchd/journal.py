"""The journal: SQLite, the single source of truth for what was seen, uploaded and submitted.

Every decision is written here *before* the network call it leads to, so a crash at any
moment is resumed from the journal on the next start:

    pending ──claim──► uploading ──► uploaded ──sidecar──► done
       ▲                   │                                 │ content changed
       └── transient ◄─────┘──► failed (permanent, reason)   └──► pending (same row, same Baidu id)
    any state ──original deleted──► tombstone (path NULL, last_path kept, Baidu delete queued)

The Baidu outbox (`outbox`) holds push and delete intents, one row per item, so batches are
rebuilt from the journal after a restart. `services` holds pauses (quota until its reset,
configuration until a reload) and `quota` the per-day counters. The tables, their
migrations, the states and the row types are in `watchd.schema`.

Durability: WAL with synchronous=NORMAL survives a killed process without losing a commit;
after a power cut the last commits may roll back, which only means work is redone (an image
uploaded twice at worst), never lost: reconciliation finds every file again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from watchd.schema import (  # re-exported: callers use journal.PENDING, journal.FileRow, …
    DELETED,
    DONE,
    FAILED,
    HELD,
    MIGRATIONS,
    PENDING,
    QUEUED,
    SENDING,
    STATES,
    UPLOADED,
    UPLOADING,
    FileRow,
    OutboxRow,
    ServicePause,
    UploadResult,
    new_baidu_id,
)

__all__ = [
    "DELETED",
    "DONE",
    "FAILED",
    "HELD",
    "JOURNAL_NAME",
    "MIGRATIONS",
    "PENDING",
    "QUEUED",
    "SENDING",
    "STATES",
    "UPLOADED",
    "UPLOADING",
    "FileRow",
    "Journal",
    "OutboxRow",
    "ServicePause",
    "UploadResult",
    "new_baidu_id",
]

JOURNAL_NAME = "journal.sqlite3"


class Journal:
    """Thread-safe access to the journal database; one connection, serialised by a lock.

    Methods that change state commit before they return, so a caller may make the network
    call the change announces as soon as the method is back.
    """

    def __init__(self, path: Path, db: sqlite3.Connection | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = db or _connect(path)
        self._pauses: list[ServicePause] | None = None
        self._any_missing: bool | None = None  # see _maybe_missing
        self._batch_depth = 0  # > 0 inside batch()
        if db is None:
            self._migrate()

    @classmethod
    def open(cls, state_dir: Path) -> Journal:
        """Open (creating with mode 0700/0600 if needed) the journal in `state_dir`."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / JOURNAL_NAME
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        return cls(path)

    @classmethod
    def open_read_only(cls, state_dir: Path) -> Journal:
        """Open an existing journal without writing anything, for `watchd status`.

        Nothing is created, so running `status` as another user (root, say) next to a
        sandboxed service leaves no files the service could not open. With no write-ahead
        log present (the daemon is stopped and shut down cleanly) the file is read as
        immutable; otherwise SQLite reads it together with its log. Raise
        `FileNotFoundError` when there is no journal yet.
        """
        path = state_dir / JOURNAL_NAME
        if not path.exists():
            raise FileNotFoundError(path)
        wal_present = path.with_name(path.name + "-wal").exists()
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro" + ("" if wal_present else "&immutable=1")
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        journal = cls(path, db)
        if journal.schema_version != len(MIGRATIONS):
            db.close()
            raise RuntimeError(
                f"journal {path} has schema version {journal.schema_version}, this watchd expects "
                f"{len(MIGRATIONS)}: let the daemon (of this version) open it first"
            )
        return journal

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- schema ------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            version = self.schema_version
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"journal {self.path} has schema version {version}, newer than this watchd "
                    f"understands ({len(MIGRATIONS)}): upgrade watchd"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {target}; COMMIT;")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._batch_depth:  # inside `batch()`: its end commits
                yield self._db
                return
            with self._db:
                yield self._db

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make this thread's writes inside the block one transaction, committed at its end.

        For many small writes in a row (reconciliation taking in a chunk of files): one
        commit instead of one per file. Other threads' writes wait for the block, so keep
        it short and free of network calls.
        """
        with self._lock, self._db:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1

    def _one(self, sql: str, args: Sequence[object] = ()) -> FileRow | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return FileRow(*row) if row else None

    def _many(self, sql: str, args: Sequence[object] = ()) -> list[FileRow]:
        with self._lock:
            return [FileRow(*row) for row in self._db.execute(sql, args).fetchall()]

    # -- reading files -----------------------------------------------------------------

    def get(self, path: str) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE path = ?", (path,))

    def get_by_id(self, file_id: int) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def get_by_ids(self, file_ids: Collection[int]) -> dict[int, FileRow]:
        """The rows of these files (those that still exist), by id: one query for a batch."""
        marks = ", ".join("?" * len(file_ids))
        return {
            row.id: row for row in self._many(f"SELECT * FROM files WHERE id IN ({marks})", list(file_ids))
        }

    def under(self, directory: str) -> list[FileRow]:
        """Live rows at or below `directory` (a directory path without trailing slash)."""
        prefix = directory.rstrip("/") + "/"
        return self._many(
            "SELECT * FROM files WHERE path >= ? AND path < ? ORDER BY path",
            (prefix, prefix[:-1] + "0"),
        )

    def iter_root(self, root: str, batch: int = 2000) -> Iterator[tuple[str, int, int, str, str | None]]:
        """(path, size, mtime_ns, state, sidecar_path) of live rows under `root`, sorted by path.

        Paged by key so memory stays bounded however large the journal is.
        """
        prefix = root.rstrip("/") + "/"
        upper = prefix[:-1] + "0"
        last = prefix
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

    def has_missing_of_size(self, size: int) -> bool:
        """Whether some vanished file of this size waits to be paired with a new one (a move)."""
        if not self._maybe_missing():
            return False
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM files WHERE missing_since IS NOT NULL AND size = ? LIMIT 1", (size,)
                ).fetchone()
                is not None
            )

    def _maybe_missing(self) -> bool:
        """Whether any file is marked vanished. Asked for every new file and every turn of the
        engine's loop, so the answer "none" is remembered until `mark_missing` (the only
        way a file becomes vanished) is called again."""
        with self._lock:
            if self._any_missing is None:
                self._any_missing = (
                    self._db.execute("SELECT 1 FROM files WHERE missing_since IS NOT NULL LIMIT 1").fetchone()
                    is not None
                )
            return self._any_missing

    def find_moved_source(self, sha256: str, size: int) -> FileRow | None:
        """The vanished file that held exactly this content, if any: the new file is that one moved."""
        return self._one(
            "SELECT * FROM files WHERE missing_since IS NOT NULL AND size = ? AND "
            "(sha256 = ? OR uploaded_sha256 = ?) ORDER BY missing_since LIMIT 1",
            (size, sha256, sha256),
        )

    def mark_missing(self, file_id: int, since: float | None) -> None:
        """The original vanished (or, with None, came back); a vanished file becomes a tombstone
        unless it reappears elsewhere (a move)."""
        with self._lock:
            self._any_missing = None if since is None else True
            self._set(file_id, missing_since=since, delete_held=0)

    def missing(self, older_than: float) -> list[FileRow]:
        """Vanished files whose grace period is over and whose deletion is not held."""
        if not self._maybe_missing():
            return []
        return self._many(
            "SELECT * FROM files WHERE missing_since IS NOT NULL AND missing_since <= ? AND delete_held != 1 "
            "ORDER BY id",
            (older_than,),
        )

    def hold_deletes(self, file_ids: Sequence[int]) -> None:
        """Too many deletions at once: keep these until `watchd confirm-deletes` (mass-delete guard).

        `delete_held` is 0 (normal), 1 (held by the guard) or 2 (confirmed: retire, bypassing it).
        """
        with self._write() as db:
            db.executemany("UPDATE files SET delete_held = 1 WHERE id = ?", [(i,) for i in file_ids])

    def held_deletes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files WHERE delete_held = 1").fetchone()[0])

    def rejudge_held_deletes(self) -> int:
        """Put held deletions back before the guard (after a start or reload: the caps may
        have been raised); returns how many."""
        with self._write() as db:
            return db.execute("UPDATE files SET delete_held = 0 WHERE delete_held = 1").rowcount

    def confirm_deletes(self) -> int:
        """Release every held deletion; returns how many (they are processed at once)."""
        with self._write() as db:
            return db.execute(
                "UPDATE files SET delete_held = 2 WHERE delete_held = 1 AND missing_since IS NOT NULL"
            ).rowcount

    def due_uploads(self, now: float, limit: int, exclude: set[int]) -> list[FileRow]:
        """Rows whose upload or sidecar step is due now, oldest first, except those in `exclude`
        (files already handed to a worker)."""
        marks = ", ".join("?" * len(exclude))
        return self._many(
            f"SELECT * FROM files WHERE state IN (?, ?) AND next_attempt_at <= ? AND id NOT IN ({marks}) "
            "ORDER BY next_attempt_at, id LIMIT ?",
            (PENDING, UPLOADED, now, *exclude, limit),
        )

    def next_due_time(self) -> float | None:
        """The earliest next-attempt time of queued uploads and sidecars, None if none is queued."""
        return self._minimum(
            "SELECT MIN(next_attempt_at) FROM files WHERE state IN (?, ?)", (PENDING, UPLOADED)
        )

    def _minimum(self, sql: str, args: Sequence[object]) -> float | None:
        with self._lock:
            value = self._db.execute(sql, args).fetchone()[0]
        return None if value is None else float(value)

    # -- changing files ----------------------------------------------------------------

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
        self._set(
            file_id,
            state=PENDING,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha256,
            error_kind=None,
            reason=None,
            attempts=0,
            next_attempt_at=0.0,
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
                self._count_quota(db, *quota, 1)

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
            self._queue_outbox(db, file_id, "push", baidu_id, push, now)
        else:
            self._queue_outbox(db, file_id, "push", baidu_id, None, now, FAILED, push_error)

    def record_retry(self, file_id: int, state: str, kind: str, reason: str, at: float) -> None:
        """Put the file back to `state` (pending or uploaded) to be tried again at `at`."""
        self._set(file_id, state=state, error_kind=kind, reason=reason, next_attempt_at=at)

    def record_failed(self, file_id: int, kind: str, reason: str) -> None:
        """A permanent failure: never retried automatically (`watchd retry` does it)."""
        self._set(file_id, state=FAILED, error_kind=kind, reason=reason)

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

    def move(self, file_id: int, new_path: str, root: str, sidecar_path: str | None) -> None:
        """The original was renamed or moved inside the watched folders."""
        with self._write() as db:
            db.execute(
                "DELETE FROM files WHERE path = ? AND id != ? AND state = ?", (new_path, file_id, FAILED)
            )
            db.execute(
                "UPDATE files SET path = ?, last_path = ?, root = ?, sidecar_path = ?, missing_since = NULL, "
                "updated_at = ? "
                "WHERE id = ?",
                (new_path, new_path, root, sidecar_path, time.time(), file_id),
            )

    def forget(self, file_id: int) -> None:
        """Drop every trace of a file (`watchd forget`): it will be treated as new if seen again."""
        with self._write() as db:
            db.execute("DELETE FROM outbox WHERE file_id = ?", (file_id,))
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def tombstone(self, file_id: int, withdraw: bool) -> None:
        """The original is gone: keep the row (path NULL) and, if asked, queue its withdrawal.

        A push still waiting in the outbox is cancelled instead: nothing to withdraw then.
        Only what Baidu may hold (pushed, or a push in flight) is withdrawn.
        """
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE files SET path = NULL, state = ?, missing_since = NULL, updated_at = ? WHERE id = ?",
                (DELETED, now, file_id),
            )
            db.execute(
                "DELETE FROM outbox WHERE file_id = ? AND action = 'push' AND state IN (?, ?, ?)",
                (file_id, QUEUED, HELD, FAILED),
            )
            row = db.execute("SELECT baidu_id, pushed_at FROM files WHERE id = ?", (file_id,)).fetchone()
            in_flight = db.execute(
                "SELECT 1 FROM outbox WHERE file_id = ? AND action = 'push' AND state = ?", (file_id, SENDING)
            ).fetchone()
            if withdraw and row and (row[1] is not None or in_flight):
                self._queue_outbox(db, file_id, "delete", row[0], None, now)

    # -- the Baidu outbox --------------------------------------------------------------

    @staticmethod
    def _baidu_id(db: sqlite3.Connection, file_id: int) -> str:
        return str(db.execute("SELECT baidu_id FROM files WHERE id = ?", (file_id,)).fetchone()[0])

    @staticmethod
    def _queue_outbox(
        db: sqlite3.Connection,
        file_id: int,
        action: str,
        baidu_id: str,
        payload: dict[str, object] | None,
        now: float,
        state: str = QUEUED,
        reason: str | None = None,
    ) -> None:
        db.execute(
            "DELETE FROM outbox WHERE file_id = ? AND action = ? AND state IN (?, ?, ?)",
            (file_id, action, QUEUED, HELD, FAILED),
        )
        db.execute(
            "INSERT INTO outbox (file_id, action, baidu_id, payload, state, reason, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, action, baidu_id, json.dumps(payload) if payload else None, state, reason, now, now),
        )

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

    def outbox_depth(self, action: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM outbox WHERE state IN (?, ?, ?)"
        args: list[object] = [QUEUED, SENDING, HELD]
        if action:
            sql += " AND action = ?"
            args.append(action)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def next_outbox_time(self) -> float | None:
        """The earliest next-attempt time of queued Baidu items, None if none is queued."""
        return self._minimum("SELECT MIN(next_attempt_at) FROM outbox WHERE state = ?", (QUEUED,))

    def mark_sending(self, ids: Sequence[int], quota: tuple[str, str] | None = None) -> None:
        """Intent: these outbox items are about to be sent; `quota` (service, day) counts
        them against that day's quota in the same transaction."""
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                [(SENDING, time.time(), i) for i in ids],
            )
            if quota is not None:
                self._count_quota(db, *quota, len(ids))

    def outbox_sent(self, rows: Sequence[OutboxRow], when: str) -> None:
        """Baidu has these items (or, for deletes, no longer has them): one transaction.

        A sent item leaves the outbox (the file's `pushed_at` says when): nothing reads it
        again, and kept with its payload it cost ~1 KB a file for ever.
        """
        with self._write() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(row.id,) for row in rows])
            db.executemany(
                "UPDATE files SET pushed_at = ? WHERE id = ?",
                [(when if row.action == "push" else None, row.file_id) for row in rows],
            )

    def outbox_retry(self, ids: Sequence[int], reason: str, at: float) -> None:
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET state = ?, reason = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(QUEUED, reason, at, time.time(), i) for i in ids],
            )

    def outbox_failed(self, row: OutboxRow, reason: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE outbox SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                (FAILED, reason, time.time(), row.id),
            )

    def recover(self, exclude: Collection[int] = (), *, outbox: bool = True) -> tuple[int, int]:
        """After a crash: interrupted uploads (and, with `outbox`, batches) go back to the queue.

        Returns (files requeued, outbox items requeued). An interrupted upload may have
        reached the host; it is uploaded again (at most one duplicate per item in flight).
        `exclude` names files whose upload is still running in this process.
        """
        with self._write() as db:
            files = sum(
                db.execute(
                    "UPDATE files SET state = ?, next_attempt_at = 0 WHERE id = ?", (PENDING, file_id)
                ).rowcount
                for (file_id,) in db.execute("SELECT id FROM files WHERE state = ?", (UPLOADING,)).fetchall()
                if file_id not in exclude
            )
        return files, self.requeue_sending() if outbox else 0

    def requeue_sending(self) -> int:
        """Outbox items marked "sending" whose call is over (or died) go back to the queue."""
        with self._write() as db:
            return db.execute(
                "UPDATE outbox SET state = ?, next_attempt_at = 0 WHERE state = ?", (QUEUED, SENDING)
            ).rowcount

    # -- services and quotas -----------------------------------------------------------

    def pause(self, name: str, kind: str, until: float | None, reason: str) -> None:
        with self._write() as db:
            self._pauses = None
            db.execute(
                "INSERT INTO services (name, paused_until, pause_kind, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "paused_until = excluded.paused_until, pause_kind = excluded.pause_kind, "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (name, until, kind, reason, time.time()),
            )

    def resume(self, name: str) -> None:
        with self._write() as db:
            self._pauses = None
            db.execute("DELETE FROM services WHERE name = ?", (name,))

    def pauses(self) -> list[ServicePause]:
        """The paused services. Asked before every send, so kept in memory between changes,
        which only this process makes (one watchd per journal)."""
        with self._lock:
            if self._pauses is None:
                rows = self._db.execute(
                    "SELECT name, pause_kind, paused_until, reason FROM services ORDER BY name"
                ).fetchall()
                self._pauses = [ServicePause(*row) for row in rows]
            return list(self._pauses)

    @staticmethod
    def _count_quota(db: sqlite3.Connection, service: str, day: str, n: int) -> None:
        db.execute(
            "INSERT INTO quota (service, day, used) VALUES (?, ?, ?) "
            "ON CONFLICT (service, day) DO UPDATE SET used = used + excluded.used",
            (service, day, n),
        )

    def quota_used(self, service: str, day: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT used FROM quota WHERE service = ? AND day = ?", (service, day)
            ).fetchone()
        return int(row[0]) if row else 0

    # -- status ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def live_count(self, root: str) -> int:
        """Files the journal knows in one watched folder (vanished ones included, tombstones not)."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM files WHERE root = ? AND path IS NOT NULL", (root,)
                ).fetchone()[0]
            )

    def release_deferred(self, kind: str) -> int:
        """Make files deferred for `kind` (e.g. a configuration pause) due again now."""
        with self._write() as db:
            return db.execute(
                "UPDATE files SET next_attempt_at = 0 WHERE state IN (?, ?) AND error_kind = ?",
                (PENDING, UPLOADED, kind),
            ).rowcount

    def counts_by_root(self) -> dict[str, dict[str, int]]:
        """Live files per watched folder and state (tombstones have no folder any more)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT root, state, COUNT(*) FROM files WHERE path IS NOT NULL GROUP BY root, state"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for root, state, n in rows:
            result.setdefault(root, dict.fromkeys(STATES, 0))[state] = n
        return result

    def retry_failed(self, paths: Sequence[str] | None = None) -> int:
        """Queue failed files (all, or those at `paths`) again; returns how many."""
        sql = "UPDATE files SET state = ?, attempts = 0, next_attempt_at = 0 WHERE state = ?"
        args: list[object] = [PENDING, FAILED]
        with self._write() as db:
            if paths is None:
                n = db.execute(sql, args).rowcount
                n += db.execute(
                    "UPDATE outbox SET state = ?, next_attempt_at = 0 "
                    "WHERE state = ? AND payload IS NOT NULL",
                    (QUEUED, FAILED),
                ).rowcount
                return n
            return sum(db.execute(sql + " AND path = ?", (*args, path)).rowcount for path in paths)

    def recent_failures(self, limit: int = 20) -> list[FileRow]:
        return self._many(
            "SELECT * FROM files WHERE state = ? OR (state IN (?, ?) AND reason IS NOT NULL) "
            "ORDER BY updated_at DESC LIMIT ?",
            (FAILED, PENDING, UPLOADED, limit),
        )

    def outbox_failures(self, limit: int = 20) -> list[OutboxRow]:
        return self._outbox_rows("state = ? ORDER BY updated_at DESC LIMIT ?", (FAILED, limit))

    def _set(self, file_id: int, **fields: object) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as db:
            db.execute(
                f"UPDATE files SET {columns}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), file_id),
            )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA journal_size_limit = 8388608")  # give disk space back after a burst
    db.execute("PRAGMA foreign_keys = ON")
    db.isolation_level = "DEFERRED"
    return db
