"""The journal's SQLite plumbing: one connection, migrations, transactions, row helpers.

`Store` is the base of every part of `watchd.journal.Journal`; the parts add the operations
on one concern each (files, vanished files, the Baidu outbox, services, status).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from watchd.schema import MIGRATIONS, FileRow, ServicePause

JOURNAL_NAME = "journal.sqlite3"


def below(directory: str) -> tuple[str, str]:
    """The bounds of the paths below `directory` in SQLite's text order, for `path >= ? AND
    path < ?` (an index range): "/w/" up to "/w0", "0" being the character after "/"."""
    prefix = directory.rstrip("/") + "/"
    return prefix, prefix[:-1] + "0"


class Store:
    """Thread-safe access to the journal database; one connection, serialised by a lock.

    Methods that change state commit before they return, so a caller may make the network
    call the change announces as soon as the method is back.
    """

    def __init__(self, path: Path, db: sqlite3.Connection | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = db or _connect(path)
        self._pauses: list[ServicePause] | None = None
        self._any_missing: bool | None = None  # see Vanished._maybe_missing
        self._batch_depth = 0  # > 0 inside batch()
        if db is None:
            self._migrate()

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True) -> Self:
        """Open (creating with mode 0700/0600 if needed) the journal in `state_dir`.

        With `create` false, raise `FileNotFoundError` when there is none: a command that
        changes a journal (`retry`, `forget`, `confirm-deletes`) pointed at the wrong state
        directory must say so, not report success on an empty journal of its own making.
        """
        path = state_dir / JOURNAL_NAME
        if not create and not path.exists():
            raise FileNotFoundError(path)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        return cls(path)

    @classmethod
    def open_read_only(cls, state_dir: Path) -> Self:
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
        if (version := journal.schema_version) != len(MIGRATIONS):
            db.close()
            raise RuntimeError(
                f"journal {path} has schema version {version}, this watchd expects "
                f"{len(MIGRATIONS)}: let the daemon (of this version) open it first"
            )
        return journal

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def _minimum(self, sql: str, args: Sequence[object]) -> float | None:
        with self._lock:
            value = self._db.execute(sql, args).fetchone()[0]
        return None if value is None else float(value)

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
